"""Transfer learning with a converted MobileNetV2: the backbone frozen (its blocks run fusedops' fused inference
kernels, batch norms folded), a new classifier head trained on a small dataset, then the last blocks unfrozen and
fine-tuned (their batch norms kept frozen, as usual on small datasets: the fused kernels then run forward and
backward). The unconverted model is trained alongside, on the same batches from the same weights: per epoch, both
accuracies (equal, up to rounding) and both training times.

    python examples/transfer_learning.py [--pretrained] [--head-epochs 3] [--finetune-epochs 2] [--unfreeze 3]
                                         [--images 1000] [--size 64] [--batch 32] [--threads N]

The dataset: scikit-learn's handwritten digits (1797 8x8 images, 10 classes) when scikit-learn is installed,
else images of stripes of four widths (the classes) at random angles, phases and colours over noise, generated on
the fly. `--pretrained` starts from torchvision's ImageNet weights (downloaded once), the real use; without it the
backbone is random, its batch-norm statistics measured on the training images (so that its frozen features are at
least normalised): random features tell the classes apart poorly, and the fine-tuning of the last blocks is what
lifts the accuracy.
"""

import argparse
import copy
import math
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import fusedops

STRIPE_WIDTHS = 4  # classes of the generated dataset


def stripes_dataset(count, size, generator):
    """`count` RGB images (size x size) of stripes of STRIPE_WIDTHS widths (the label, coarse to fine), at random
    angles, phases and colours over noise, and their labels."""
    labels = torch.randint(STRIPE_WIDTHS, (count,), generator=generator)
    axis = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    angle = torch.rand(count, 1, 1, generator=generator) * math.pi
    frequency = (labels.view(-1, 1, 1) * 2 + 1.5 + torch.rand(count, 1, 1, generator=generator)) * math.pi
    phase = torch.rand(count, 1, 1, generator=generator) * 2 * math.pi
    across = x * angle.cos() + y * angle.sin()
    stripes = ((across * frequency + phase).sin() > 0).float().unsqueeze(1)
    foreground = torch.rand(count, 3, 1, 1, generator=generator)
    background = torch.rand(count, 3, 1, 1, generator=generator) * 0.5
    images = stripes * foreground + (1 - stripes) * background
    return images + 0.1 * torch.randn(images.shape, generator=generator), labels, "stripes of 4 widths (generated)"


def load_dataset(count, size, generator):
    """(images N x 3 x size x size, labels, name): scikit-learn's digits if it is installed, else stripes."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return stripes_dataset(count, size, generator)
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    order = torch.randperm(len(images), generator=generator)[:count]
    return images[order].contiguous(), torch.tensor(digits.target)[order], "scikit-learn digits"


def measure_batch_norm_statistics(model, images, batch):
    """Running statistics of every batch norm over `images` (a plain average), for a random backbone."""
    batch_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in batch_norms:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            model(images[start:start + batch])
    for bn in batch_norms:
        bn.momentum = 0.1
    model.eval()


def set_trainable(model, unfrozen_blocks):
    """Only the classifier and the last `unfrozen_blocks` of the features learn; every batch norm stays frozen
    (eval mode), so the converted blocks run the fused kernels."""
    model.eval()
    for p in model.features.parameters():
        p.requires_grad_(False)
    if unfrozen_blocks:
        for p in model.features[-unfrozen_blocks:].parameters():
            p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def train_epoch(model, optimizer, images, labels, order, batch):
    """One pass over the images in `order`: (seconds, mean training loss)."""
    start = time.perf_counter()
    losses = []
    for first in range(0, len(order), batch):
        chosen = order[first:first + batch]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images[chosen]), labels[chosen])
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return time.perf_counter() - start, torch.stack(losses).mean().item()


def accuracy(model, images, labels, batch):
    with torch.inference_mode():
        predictions = torch.cat([model(images[s:s + batch]).argmax(1) for s in range(0, len(images), batch)])
    return (predictions == labels).float().mean().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", action="store_true", help="start from torchvision's ImageNet weights")
    parser.add_argument("--head-epochs", type=int, default=3, help="epochs of the new head on the frozen backbone")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="epochs with the last blocks unfrozen")
    parser.add_argument("--unfreeze", type=int, default=3, help="how many of the last feature blocks fine-tune")
    parser.add_argument("--images", type=int, default=1000, help="dataset size (80%% train, 20%% test)")
    parser.add_argument("--size", type=int, default=64, help="image height and width")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    images, labels, dataset = load_dataset(args.images, args.size, generator)
    classes = int(labels.max()) + 1
    split = len(images) * 4 // 5
    train_images, train_labels = images[:split], labels[:split]
    test_images, test_labels = images[split:], labels[split:]

    plain = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1" if args.pretrained else None)
    if not args.pretrained:
        measure_batch_norm_statistics(plain, train_images, args.batch)
    plain.classifier = nn.Linear(plain.last_channel, classes)  # the new head
    initial = copy.deepcopy(plain.state_dict())
    fused, report = fusedops.convert(copy.deepcopy(plain), report=True)  # the same weights, on fused blocks
    inputs = {"fused": (fused, train_images.contiguous(memory_format=torch.channels_last),
                        test_images.contiguous(memory_format=torch.channels_last)),
              "plain": (plain, train_images, test_images)}
    print(f"dataset: {dataset}, {split} training and {len(test_images)} test images of {args.size}x{args.size}, "
          f"{classes} classes; backbone: MobileNetV2 ({'ImageNet weights' if args.pretrained else 'random'}); "
          f"threads: {torch.get_num_threads()}")
    print(f"fusedops.convert: {len(report.replaced)} modules on fused blocks, {len(report.left_alone)} kept")

    for model, train_x, _ in inputs.values():  # first-call costs (kernel selection, scratch) out of the epoch times
        accuracy(model.eval(), train_x[:args.batch], train_labels[:args.batch], args.batch)
    history = []
    phases = [("head", 0, args.head_epochs, 1e-2), ("fine-tune", args.unfreeze, args.finetune_epochs, 1e-3)]
    for phase, unfrozen, epochs, learning_rate in phases:
        optimizers = {name: torch.optim.Adam(set_trainable(model, unfrozen), lr=learning_rate)
                      for name, (model, _, _) in inputs.items()}
        for epoch in range(1, epochs + 1):
            order = torch.randperm(split, generator=generator)  # the same batches for both models
            row = {"phase": phase, "epoch": epoch}
            for name, (model, train_x, test_x) in inputs.items():
                row[f"{name}_seconds"], row[f"{name}_loss"] = train_epoch(model, optimizers[name], train_x,
                                                                         train_labels, order, args.batch)
                row[f"{name}_accuracy"] = accuracy(model, test_x, test_labels, args.batch)
            history.append(row)
            print(f"{phase} epoch {epoch}: training loss {row['fused_loss']:.3f} (unconverted "
                  f"{row['plain_loss']:.3f}), test accuracy fused {row['fused_accuracy']:.3f}, unconverted "
                  f"{row['plain_accuracy']:.3f}; epoch time fused {row['fused_seconds']:.2f} s, unconverted "
                  f"{row['plain_seconds']:.2f} s ({row['plain_seconds'] / row['fused_seconds']:.2f}x)", flush=True)
    return {"dataset": dataset, "history": history, "fused": fused, "plain": plain, "initial": initial,
            "test_images": len(test_images)}


if __name__ == "__main__":
    main()
