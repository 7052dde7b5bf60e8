"""Channel-count rounding of the MobileNets."""


def make_divisible(v: float, divisor: int, min_value=None) -> int:
    """`v` rounded to the nearest multiple of `divisor` (at least `min_value`, default `divisor`), but not below
    90% of `v`: the channel rounding of the reference TensorFlow implementation, which torchvision keeps, so
    widths other than 1 give the same channel counts (and state dicts) as torchvision's."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v
