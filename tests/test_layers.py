"""The structure: layers that only point down (no import circle), every module importable on its own, lazy imports
(`rl-lab config` without torch; a CartPole run without the supervised tasks, scikit-learn, or matplotlib before it
draws), registries that match the schema, and nothing but rl_lab installed at the top level."""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import CARTPOLE_CONFIG, REPO, TINY

# the import name of each top-level folder of the repository (pyproject.toml's package-dir)
PACKAGES = {"rl_lab": "rl_lab", "agents": "rl_lab.agents", "envs": "rl_lab.envs"}


def _modules() -> dict[str, Path]:
    modules = {}
    for folder, name in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([name, *parts])] = path
    return modules


MODULES = _modules()
LIBRARY = [m for m in MODULES if not m.endswith("__main__")]  # `python -m rl_lab` runs the CLI when imported


def _imports(module: str, path: Path) -> set[str]:
    """Project modules `module` imports anywhere in its body (function-level imports too; not TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for stmt in node.body for n in ast.walk(stmt)}  # fmt: skip
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}".rstrip(".")
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def test_the_import_graph_has_no_circle():
    graph = {m: _imports(m, p) for m, p in MODULES.items()}
    # a package's __init__ importing its own submodules (to re-export them) is not a layer pointing up
    graph = {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in graph.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circle = path[path.index(target) :] + [target]
                pytest.fail("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def _python(code: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_every_module_imports_alone_in_a_fresh_interpreter():
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(LIBRARY, pool.map(lambda m: _python(f"import {m}"), LIBRARY), strict=True))
    failed = {m: r.stderr.strip().splitlines()[-1] for m, r in results.items() if r.returncode != 0}
    assert not failed, failed


def test_config_command_does_not_import_torch():
    code = f"""
import contextlib, io, sys
from rl_lab.commands import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["config", {str(CARTPOLE_CONFIG)!r}, "agent.optim.lr=1e-3"]) == 0
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_cartpole_run_loads_no_task_no_sklearn_and_matplotlib_only_to_draw(tmp_path):
    overrides = [*TINY, "train.total_steps=1000", "eval.every=0", f"run.dir={tmp_path / 'run'}"]
    code = f"""
import sys
from pathlib import Path
from rl_lab import runs

class FirstMatplotlibImport:  # records whether training had finished (summary.json written) when it came
    finished = None
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" and FirstMatplotlibImport.finished is None:
            FirstMatplotlibImport.finished = Path({str(tmp_path / "run")!r}, "summary.json").exists()

sys.meta_path.insert(0, FirstMatplotlibImport())
run = runs.start_run({str(CARTPOLE_CONFIG)!r}, {overrides!r})
runs.train(run)
print(sorted(m for m in sys.modules if m.startswith(("rl_lab.tasks", "rl_lab.ram", "sklearn"))))
print(FirstMatplotlibImport.finished)
"""
    result = _python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    loaded, matplotlib_after_training = result.stdout.strip().splitlines()
    assert loaded == "[]"
    assert matplotlib_after_training == "True" and (tmp_path / "run" / "plots" / "learning_curve.png").is_file()


def test_nothing_named_agents_or_envs_is_importable_at_the_top_level(tmp_path):
    result = _python("import importlib.util as u; print(u.find_spec('agents'), u.find_spec('envs'))", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None None"
    result = _python("import rl_lab.agents, rl_lab.envs; print(rl_lab.agents.__name__, rl_lab.envs.__name__)", tmp_path)
    assert result.stdout.strip() == "rl_lab.agents rl_lab.envs"


def test_schema_names_match_the_registries():
    from rl_lab.backbone import ENCODERS
    from rl_lab.config import DatasetName, EncoderName
    from rl_lab.data import DATASETS
    from rl_lab.data.captions import CAPTION_DATASETS

    assert set(typing.get_args(EncoderName)) == set(ENCODERS)
    assert set(typing.get_args(DatasetName)) == {*DATASETS, *CAPTION_DATASETS}


def test_every_registered_agent_and_task_resolves_to_its_class():
    from rl_lab.loader import AGENTS, LOOPS, TASKS, resolve

    for name, (settings, target) in {**AGENTS, **TASKS}.items():
        assert resolve(settings)().name == name
        assert isinstance(resolve(target), type)
    for name, (_, target) in AGENTS.items():
        assert resolve(target).loop in LOOPS, name


def test_own_env_ids_carry_the_namespace_and_old_ids_say_so():
    from rl_lab.envs import check_env_id
    from rl_lab.errors import UserError

    check_env_id("rl_lab/GridWorld-v0")
    with pytest.raises(UserError, match="is now 'rl_lab/GridWorld-v0'"):
        check_env_id("GridWorld-v0")
