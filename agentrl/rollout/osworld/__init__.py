"""OSWorld for agentrl: tasks and datasets, the env registry with leasing, env provisioning, and
the stateful pyautogui sampler (the AgentRL guide's OSWorld section)::

    from agentrl.rollout.osworld import OSWorldStatefulSampler, OSworldDataset, setup_osworld_envs

    envs = setup_osworld_envs(cfg)          # LOCAL_RANK 0 registers this node's envs
    SamplingScheduler(config=cfg, sampler_class=OSWorldStatefulSampler,
                      dataset=OSworldDataset(cfg.train_file), split="train").run()
    envs.close()                            # unregister

Modules: ``dataset`` (OSworldTask, OSworldDataset), ``actions`` (parse_action), ``envs``
(Environment, OSWorldEnv, EnvLease), ``client`` (OSWorldEnvClient), ``provision``
(setup_osworld_envs), ``bridge`` (desktop-env bridge), ``sampler`` (OSWorldStatefulSampler).
See docs/osworld.md.
"""

from agentrl.rollout.osworld.actions import ParsedAction, parse_action
from agentrl.rollout.osworld.client import OSWorldEnvClient
from agentrl.rollout.osworld.dataset import OSworldDataset, OSworldTask
from agentrl.rollout.osworld.envs import Environment, EnvLease, EnvStatus, OSWorldEnv
from agentrl.rollout.osworld.provision import ProvisionedEnvs, setup_osworld_envs
from agentrl.rollout.osworld.sampler import OSWorldStatefulSampler

__all__ = [
    "EnvLease",
    "EnvStatus",
    "Environment",
    "OSWorldEnv",
    "OSWorldEnvClient",
    "OSWorldStatefulSampler",
    "OSworldDataset",
    "OSworldTask",
    "ParsedAction",
    "ProvisionedEnvs",
    "parse_action",
    "setup_osworld_envs",
]
