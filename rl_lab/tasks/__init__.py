"""Supervised tasks on the shared backbone: classification (+ DDP), captioning; RAM lives in rl_lab/ram/.

Nothing is imported here: rl_lab.loader maps `task.name` to its config (tasks/configs.py) and its trainer.
"""
