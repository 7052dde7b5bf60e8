"""Bar chart of benchmark rows (harness.CSV_COLUMNS): per case, the first provider's speed-up over each baseline."""


def draw_speedups(rows, out, title):
    """Draws the speed-up rows among `rows` (those with a "speedup"; the latest of each case, mode and baseline)
    into the PNG file `out`. Returns `out`; raises ValueError when no row has a speed-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest = {}
    for r in rows:
        if r["speedup"]:
            latest[(r["case"], r["mode"], r["provider"])] = r
    if not latest:
        raise ValueError("no speed-up rows to draw")
    cases = list(dict.fromkeys((c, m) for c, m, _ in latest))  # in the order they were measured
    baselines = list(dict.fromkeys(p for _, _, p in latest))
    fig, ax = plt.subplots(figsize=(max(8, 0.5 * len(cases)), 5))
    width = 0.8 / len(baselines)
    for i, b in enumerate(baselines):
        xs, ys = [], []
        for j, (c, m) in enumerate(cases):
            r = latest.get((c, m, b))
            if r:
                xs.append(j + i * width)
                ys.append(float(r["speedup"]))
        ax.bar(xs, ys, width, label=f"vs {b}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
    ax.set_xticklabels([f"{c} [{m}]" for c, m in cases], rotation=75, ha="right", fontsize=7)
    last = next(reversed(latest.values()))
    ax.set_ylabel(f"speed-up of {last['speedup_of']} (x)")
    ax.set_title(f"{title}: {last['speedup_of']} speed-up (threads {last['threads']}, {last['allocator']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
