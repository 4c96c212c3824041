"""The recurrent attention model (RAM; Mnih et al. 2014), all in one place:

rl_lab/agents/ram.py   the model (glimpse, core, location, classifier and baseline networks) and its hybrid loss
rl_lab/ram/sensor.py   the batched glimpse sensor (multi-resolution patches, zero padding)
rl_lab/ram/task.py     training as a supervised task (`task.name: ram`, configs/ram_*.yaml)
rl_lab/ram/figures.py  where it looked: glimpse paths as PNG grids and GIFs
rl_lab/envs/glimpse.py the same sensor as a gymnasium env (`rl_lab/Glimpse-v0`) for any agent
"""
