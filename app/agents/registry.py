"""Name → agent. Built-ins are always present; more can be registered at start-up."""

from __future__ import annotations

from app.agents.base import Agent
from app.agents.demo import DemoAgent
from app.errors import InvalidInput
from protocol.messages import AgentCard


class AgentRegistry:
    def __init__(self, agents: list[Agent] | None = None) -> None:
        self._agents: dict[str, Agent] = {}
        for agent in agents if agents is not None else [DemoAgent()]:
            self.register(agent)

    def register(self, agent: Agent) -> None:
        if agent.name in self._agents:
            raise ValueError(f"agent {agent.name!r} is registered twice")
        self._agents[agent.name] = agent

    def get(self, name: str) -> Agent:
        agent = self._agents.get(name)
        if agent is None:
            known = ", ".join(sorted(self._agents))
            raise InvalidInput("unknown_agent", f"no agent {name!r} (known: {known})")
        return agent

    def cards(self) -> list[AgentCard]:
        return [a.card for a in self._agents.values()]

    async def close(self) -> None:
        for agent in self._agents.values():
            await agent.close()
