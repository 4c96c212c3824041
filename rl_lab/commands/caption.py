"""`rl-lab caption RUN_DIR IMAGE`: print the caption a captioning run's best weights give an image; with
--attention, draw where each word looked (a PNG, default RUN_DIR/plots/attention-IMAGE.png)."""

from __future__ import annotations

from pathlib import Path

from rl_lab.errors import UserError


def caption(
    run_dir: str | Path, image_path: str | Path, attention: bool = False, beam: int | None = None, out=None
) -> tuple[list[str], Path | None]:
    """Print the caption (and the attention figure's path); returns the words and the figure's path."""
    from rl_lab.config import TaskConfig
    from rl_lab.runs import open_run
    from rl_lab.tasks.captioning import caption_file

    run = open_run(run_dir)
    if not isinstance(run.config, TaskConfig) or run.config.task.name != "captioning":
        raise UserError(f"{run.dir} is not a captioning run (its config has no task.name=captioning)")
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
