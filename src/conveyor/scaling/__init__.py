"""Scaling workers on backlog: the HPA's algorithm (:mod:`.hpa`), shared by the local
autoscaler (``conveyor worker --autoscale``) and the simulator (``conveyor autoscale-sim``)."""

from .hpa import DEFAULT_BEHAVIOR, Autoscaler, Behavior, ScalingPolicy, ScalingRules

__all__ = ["DEFAULT_BEHAVIOR", "Autoscaler", "Behavior", "ScalingPolicy", "ScalingRules"]
