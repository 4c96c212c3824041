"""One file per algorithm, read top to bottom: dqn.py, tabular_q.py, reinforce.py, actor_critic.py (A2C) and
ram.py, with what REINFORCE and A2C share in policy_gradient.py and every agent's settings in configs.py.

Nothing is imported here: rl_lab.loader maps `agent.name` to its config and its class, loading only the agent a
run needs.
"""
