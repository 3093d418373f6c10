"""Tool-using agents over MCP servers: tasks, dataset, the ``mcp`` sampler, sessions, rewards.

- :mod:`~agentrl.rollout.mcp.servers`: the ``mcp.json`` file (config ``mcp_config``);
- :mod:`~agentrl.rollout.mcp.pool`: :class:`MCPSessionPool`, sessions shared per worker process
  (any sampler may call tools: ``pool = await session_pool(self.config)``,
  ``await pool.call(name, arguments, timeout_s)``);
- :mod:`~agentrl.rollout.mcp.task`: :class:`MCPTask`, :class:`MCPDataset`;
- :mod:`~agentrl.rollout.mcp.rewards`: final answers, exact match, the LLM judge;
- :mod:`~agentrl.rollout.mcp.sampler`: :class:`MCPSampler`, the tool loop.
"""

from agentrl.rollout.mcp.pool import MCPSessionPool, close_session_pools, session_pool
from agentrl.rollout.mcp.sampler import MCPSampler
from agentrl.rollout.mcp.task import MCPDataset, MCPTask

__all__ = [
    "MCPDataset",
    "MCPSampler",
    "MCPSessionPool",
    "MCPTask",
    "close_session_pools",
    "session_pool",
]
