"""Simulated device models, by the name a scenario gives them (``model:``)."""

from __future__ import annotations

from simulators.models.base import DeviceModel, Frames, GroupContext, Options
from simulators.models.environment import NbiotEnv, NbiotSenml, WaterLevel
from simulators.models.hj212 import Hj212Station
from simulators.models.parking import ParkingSpace
from simulators.models.streetlight import Streetlight
from simulators.models.traffic import Gantry
from simulators.models.vehicles import Ev, Jt808Terminal

MODELS: dict[str, type[DeviceModel]] = {
    m.name: m
    for m in (
        Hj212Station,
        NbiotEnv,
        NbiotSenml,
        Streetlight,
        Gantry,
        Ev,
        Jt808Terminal,
        WaterLevel,
        ParkingSpace,
    )
}

__all__ = ["MODELS", "DeviceModel", "Frames", "GroupContext", "Options"]
