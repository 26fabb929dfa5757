"""Runtime primitives for multi-step LLM agent loops, with no dependencies.

Every public name is re-exported here; see the module of each for details.
"""

from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.events import (
    DEFAULT_RING_CAPACITY,
    AgentEvent,
    AgentFailureClass,
    EventName,
    EventSink,
    RingBufferSink,
    UsageRecord,
    UsageSink,
)
from techrevati.runtime.quality_gate import QualityGate, QualityGateOutcome, QualityLevel

__all__ = [
    "DEFAULT_RING_CAPACITY",
    "AgentEvent",
    "AgentFailureClass",
    "EventName",
    "EventSink",
    "InvalidValueError",
    "QualityGate",
    "QualityGateOutcome",
    "QualityLevel",
    "RingBufferSink",
    "TechrevatiError",
    "UsageRecord",
    "UsageSink",
]
