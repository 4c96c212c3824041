"""`rl-lab caption RUN_DIR IMAGE`: print the caption a captioning run's best weights give an image; with
--attention, draw where each word looked (a PNG, default RUN_DIR/plots/attention-IMAGE.png).
`rl-lab caption RUN_DIR --samples DIR`: images to try it on, written from a held-out split of the run's dataset
(PNG files, as the model sees them, with their reference captions in DIR/captions.txt)."""

from __future__ import annotations

from pathlib import Path

from rl_lab.errors import UserError


def caption(
    run_dir: str | Path, image_path: str | Path, attention: bool = False, beam: int | None = None, out=None
) -> tuple[list[str], Path | None]:
    """Print the caption (and the attention figure's path); returns the words and the figure's path."""
    from rl_lab.tasks.captioning import caption_file

    run = _captioning_run(run_dir)
    c = run.config.task
    if attention and not c.attention:
        raise UserError(f"{run.dir} was trained without attention (task.attention=false); drop --attention")
    if beam is not None and beam < 1:
        raise UserError(f"--beam {beam}: must be >= 1")
    path = None
    if attention:
        path = Path(out) if out else run.dir / "plots" / f"attention-{Path(image_path).stem}.png"
    words = caption_file(run.checkpoint, c, image_path, beam or c.beam, path)
    print(" ".join(words))
    if path is not None:
        print(f"attention map: {path}")
    return words, path


def write_samples(run_dir: str | Path, out: str | Path, split: str = "test", count: int = 8) -> list[Path]:
    """Write `count` images of a split of the run's dataset into `out` (PNG) with their reference captions
    (out/captions.txt); print where they are and how to caption one."""
    from rl_lab.data.captions import CAPTION_SPLITS, load_captions, save_image

    run = _captioning_run(run_dir)
    d = run.config.data
    if split not in CAPTION_SPLITS[d.name]:
        raise UserError(f"--split {split}: {d.name} has the splits {', '.join(CAPTION_SPLITS[d.name])}")
    if count < 1:
        raise UserError(f"--count {count}: must be >= 1")
    data = load_captions(d.name, split, **d.kwargs)
    out = Path(out)
    paths, lines = [], []
    for image, refs, image_id in list(zip(data.images, data.captions, data.ids, strict=True))[:count]:
        path = save_image(image.numpy(), out / f"{split}-{image_id}.png")
        paths.append(path)
        lines.append(f"{path.name}: " + " | ".join(" ".join(ref) for ref in refs))
    (out / "captions.txt").write_text("\n".join(lines) + "\n")
    print(f"{len(paths)} {split} images of {d.name} in {out} (reference captions: {out / 'captions.txt'})")
    print(f"caption one: rl-lab caption {run.dir} {paths[0]} --attention")
    return paths


def _captioning_run(run_dir: str | Path):
    from rl_lab.config import TaskConfig
    from rl_lab.runs import open_run

    run = open_run(run_dir)
    if not isinstance(run.config, TaskConfig) or run.config.task.name != "captioning":
        raise UserError(f"{run.dir} is not a captioning run (its config has no task.name=captioning)")
    return run
