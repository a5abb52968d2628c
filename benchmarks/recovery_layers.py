"""Where a refitted student departs from the teacher, layer by layer, on images outside the
calibration set (the diagnosis of the RRDB's exploding recovery in ``runs/recovery/RESULTS.md``).

Prunes the model (L1, uniform ratio), refits it with the engine's recovery on random crops of the
calibration images, then prints the per-image output MSE on the job's held-out split and on the
benchmark's ``heldout.npy``, and for every refitted layer in forward order its relative squared
error against the teacher's output on the kept channels and both outputs' largest magnitude.

    python -m benchmarks.recovery_layers [--model realesrgan_x4plus_anime_6b] [--crop 40] [--samples 32]
"""

from __future__ import annotations

import argparse

import torch


def main(argv: list[str] | None = None) -> int:
    from benchmarks.recovery_study import prune_uniform
    from worker.engine import recover
    from worker.engine.stages.setup import forward

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="realesrgan_x4plus_anime_6b")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--crop", type=int, default=40)
    ap.add_argument("--samples", type=int, default=32)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    p = prune_uniform(args.model, args.ratio)
    teacher, student, sampler, kept, ext = p.teacher, p.student, p.sampler, p.kept, p.heldout
    torch.manual_seed(0)
    with sampler.crops(args.crop):
        batch = sampler.train_batch(args.samples)
    res = recover.recover(teacher, student, kept, batch, seed=0)
    print(f"refitted {len(res.refitted)} layers in {res.seconds:.1f} s")
    for label, x in (("job held-out", sampler.heldout(8)), ("heldout.npy", ext)):
        t, s = forward(teacher, x), forward(student, x)
        per = (s - t).pow(2).flatten(1).mean(1)
        print(
            f"{label}: per-image MSE {[f'{v:.3g}' for v in per.tolist()]}, max |out| {float(s.abs().max()):.3g}"
        )
    layers = recover.refittable_layers(student)
    outs: dict[str, dict[str, torch.Tensor]] = {"t": {}, "s": {}}

    def hook(who: str, name: str):  # type: ignore[no-untyped-def]
        def fn(_m: torch.nn.Module, _i: object, o: torch.Tensor) -> None:
            outs[who][name] = o.detach()

        return fn

    handles = [teacher.get_submodule(n).register_forward_hook(hook("t", n)) for n in layers]
    handles += [m.register_forward_hook(hook("s", n)) for n, m in layers.items()]
    with torch.no_grad():
        teacher(*ext.values())
        student(*ext.values())
    for h in handles:
        h.remove()
    print(f"{'layer':40s} {'rel. error':>12s} {'max|student|':>13s} {'max|teacher|':>13s}")
    for n in layers:
        t, s = outs["t"].get(n), outs["s"].get(n)
        if t is None or s is None:
            continue
        t = t[:, kept[n]] if n in kept else t
        if t.shape == s.shape:
            rel = float((s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-12))
            print(f"{n:40s} {rel:12.4g} {float(s.abs().max()):13.4g} {float(t.abs().max()):13.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
