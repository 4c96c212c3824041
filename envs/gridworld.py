"""Grid World: the finite MDP the RL lecture starts from, with its model (P, R) exposed for planning.

A map is text, one character per cell: `#` wall, `.` free, `S` start, `T` terminal. Every move costs
`step_reward` (-1: the return is minus the number of moves); entering a terminal cell ends the episode. Bumping
into a wall or the border leaves the agent in place. With `slip` > 0 the agent moves at right angles to the chosen
direction with probability slip/2 each way (Russell & Norvig's 0.8/0.1/0.1 is slip=0.2). Without `S` cells an
episode starts on a uniformly random non-terminal cell.

States are the non-wall cells in row-major order. `P[s, a, s']` and `R[s, a]` (expected reward) describe every
move; terminal states are absorbing with reward 0, and planning never bootstraps from them. The time limit
(`max_episode_steps`) truncates episodes without changing the MDP, so it does not change Q*.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from rl_lab.errors import UserError
from rl_lab.fileio import read_user_text

MAPS = {
    # Sutton & Barto's Figure 4.1 / the lecture: two grey terminal corners, start anywhere else.
    "4x4": ["T...", "....", "....", "...T"],
    # Four rooms joined by doorways (Sutton, Precup & Singh 1999, smaller): start top-left, goal bottom-right.
    "rooms": [
        "S....#.....",
        ".....#.....",
        "...........",
        ".....#.....",
        ".....#.....",
        "##.####.###",
        ".....#.....",
        ".....#.....",
        "...........",
        ".....#....T",
    ],
    # A maze with one shortest path and dead ends.
    "maze": [
        "S.#.....",
        ".##.###.",
        "....#...",
        "##.##.##",
        "...#...#",
        ".#...#.T",
    ],
}
CELLS = "#.ST"
ACTIONS = ("up", "right", "down", "left")
MOVES = np.array([(-1, 0), (0, 1), (1, 0), (0, -1)])  # (row, col) per action, clockwise from up
ARROWS = "↑→↓←"
OBS_MODES = ("index", "onehot", "coords")


@dataclass(frozen=True)
class GridMap:
    """A parsed map: cell kinds, and for each state (a non-wall cell, row-major) its coordinates."""

    name: str
    rows: tuple[str, ...]

    @classmethod
    def load(cls, spec: str | list[str]) -> GridMap:
        """A shipped map's name, a path to a text map, or the map itself as a list of rows."""
        if isinstance(spec, (list, tuple)):
            return cls.parse("custom", [str(r) for r in spec])
        if spec in MAPS:
            return cls.parse(spec, MAPS[spec])
        path = Path(spec)
        if path.is_file():
            lines = [line.rstrip("\n") for line in read_user_text(path, "grid map").splitlines()]
            return cls.parse(path.stem, [line for line in lines if line.strip()])
        raise UserError(f"grid map {spec!r} is neither a shipped map ({', '.join(MAPS)}) nor a map file")

    @classmethod
    def parse(cls, name: str, rows: list[str]) -> GridMap:
        if not rows or len({len(r) for r in rows}) != 1 or not rows[0]:
            raise UserError(f"grid map {name!r}: rows must be non-empty and of equal length")
        bad = sorted({ch for r in rows for ch in r} - set(CELLS))
        if bad:
            raise UserError(f"grid map {name!r}: unknown cell {bad[0]!r}; use # wall, . free, S start, T terminal")
        grid = cls(name, tuple(rows))
        if grid.terminal.all():
            raise UserError(f"grid map {name!r} has no free non-terminal cell to start from")
        return grid

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.rows[0])

    @property
    def cells(self) -> np.ndarray:
        """(n_states, 2) row and column of every state."""
        return np.array([(i, j) for i, r in enumerate(self.rows) for j, ch in enumerate(r) if ch != "#"])

    @property
    def kinds(self) -> np.ndarray:
        return np.array([self.rows[i][j] for i, j in self.cells])

    @property
    def terminal(self) -> np.ndarray:
        return self.kinds == "T"

    @property
    def start(self) -> np.ndarray:
        """Initial-state distribution: the S cells, else every non-terminal cell, uniformly."""
        weights = (self.kinds == "S") if (self.kinds == "S").any() else ~self.terminal
        return weights / weights.sum()

    def index(self) -> np.ndarray:
        """(height, width) array: the state at each cell, -1 on walls."""
        out = np.full(self.shape, -1)
        cells = self.cells
        out[cells[:, 0], cells[:, 1]] = np.arange(len(cells))
        return out

    def model(self, step_reward: float, slip: float) -> tuple[np.ndarray, np.ndarray]:
        """P[s, a, s'] and R[s, a]: every move costs step_reward; terminal states are absorbing with reward 0."""
        cells, index = self.cells, self.index()
        n, height, width = len(cells), *self.shape
        P = np.zeros((n, len(MOVES), n))
        for a in range(len(MOVES)):
            for direction, prob in ((a, 1.0 - slip), ((a + 1) % 4, slip / 2), ((a - 1) % 4, slip / 2)):
                target = cells + MOVES[direction]
                inside = (target >= 0).all(1) & (target[:, 0] < height) & (target[:, 1] < width)
                dest = np.where(inside, index[target[:, 0].clip(0, height - 1), target[:, 1].clip(0, width - 1)], -1)
                dest = np.where(dest >= 0, dest, np.arange(n))  # walls and the border: stay
                np.add.at(P[:, a], (np.arange(n), dest), prob)
        R = np.full((n, len(MOVES)), float(step_reward))
        terminal = self.terminal
        P[terminal] = 0.0
        for s in np.flatnonzero(terminal):
            P[s, :, s] = 1.0
        R[terminal] = 0.0
        return P, R


class GridWorldEnv(gym.Env):
    """Gymnasium env over a GridMap; sampling uses exactly P, so the two cannot disagree."""

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}
    CELL_PX = 24

    def __init__(
        self,
        map: str | list[str] = "4x4",  # noqa: A002 - the natural name for users' env.kwargs
        obs: str = "index",
        step_reward: float = -1.0,
        slip: float = 0.0,
        render_mode: str | None = None,
    ):
        if obs not in OBS_MODES:
            raise UserError(f"GridWorld obs={obs!r}: choose one of {', '.join(OBS_MODES)}")
        if not 0.0 <= slip <= 1.0:
            raise UserError(f"GridWorld slip={slip!r}: must be in [0, 1]")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise UserError(f"GridWorld render_mode={render_mode!r}: choose ansi or rgb_array")
        self.grid = GridMap.load(map)
        self.obs_mode, self.step_reward, self.slip, self.render_mode = obs, float(step_reward), float(slip), render_mode
        self.P, self.R = self.grid.model(self.step_reward, self.slip)
        self.terminal = self.grid.terminal
        self.n_states = len(self.terminal)
        self._cumulative_P = self.P.cumsum(axis=2)
        self.action_space = gym.spaces.Discrete(len(ACTIONS))
        if obs == "index":
            self.observation_space = gym.spaces.Discrete(self.n_states)
        elif obs == "onehot":
            self.observation_space = gym.spaces.Box(0.0, 1.0, (self.n_states,), np.float32)
        else:
            self.observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
        self.state = 0

    def observation(self, states: np.ndarray | int) -> np.ndarray:
        """The observation of one state or of an array of states (e.g. all of them, to read a Q-network)."""
        states = np.asarray(states)
        if self.obs_mode == "index":
            return states.astype(np.int64)[()]  # a scalar np.int64 for one state, as Discrete expects
        if self.obs_mode == "onehot":
            return np.eye(self.n_states, dtype=np.float32)[states]
        height, width = self.grid.shape
        scale = np.array([max(height - 1, 1), max(width - 1, 1)], dtype=np.float32)
        return (self.grid.cells[states] / scale).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.state = int(self.np_random.choice(self.n_states, p=self.grid.start))
        return self.observation(self.state), {}

    def step(self, action):
        s, a = self.state, int(action)
        cumulative = self._cumulative_P[s, a]  # scaled by its last entry: a sum of floats may end at 1 - 1e-16
        self.state = int(np.searchsorted(cumulative, self.np_random.random() * cumulative[-1], side="right"))
        return self.observation(self.state), float(self.R[s, a]), bool(self.terminal[self.state]), False, {}

    def render(self):
        if self.render_mode == "ansi":
            return self.text()
        if self.render_mode == "rgb_array":
            return self.image()
        return None

    def text(self) -> str:
        rows = [list(r) for r in self.grid.rows]
        i, j = self.grid.cells[self.state]
        rows[i][j] = "A"
        return "\n".join("".join(r) for r in rows) + "\n"

    def image(self) -> np.ndarray:
        colors = {"#": (40, 40, 40), ".": (245, 245, 245), "S": (200, 230, 255), "T": (160, 160, 160)}
        height, width = self.grid.shape
        px = self.CELL_PX
        img = np.empty((height, width, 3), dtype=np.uint8)
        for i, row in enumerate(self.grid.rows):
            for j, ch in enumerate(row):
                img[i, j] = colors[ch]
        img = img.repeat(px, 0).repeat(px, 1)
        img[::px], img[:, ::px] = 120, 120  # grid lines
        i, j = self.grid.cells[self.state]
        margin = px // 4
        img[i * px + margin : (i + 1) * px - margin, j * px + margin : (j + 1) * px - margin] = (220, 50, 50)
        return img
