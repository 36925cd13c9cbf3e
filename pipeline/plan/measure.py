"""What the objects table measures of the input (``objects``: the segmented channel, other channels,
the background ring), checked against the input when a run is planned. The measurements themselves
are :mod:`pipeline.stages.intensity`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..volume.errors import InputError
from ..volume.io import open_input

if TYPE_CHECKING:
    from ..config import Config
    from ..volume.input_volume import InputVolume


@dataclass(frozen=True)
class Measure:
    """What the objects table measures: the channels read for it (``None``: the channel the network
    reads, i.e. ``input.channel``), the column suffix of each, and the background ring's width."""

    channels: tuple[int | None, ...]
    suffixes: tuple[str, ...]
    ring: int

    def describe(self) -> str:
        """For ``pipeline plan``: e.g. ``intensity of the segmented channel, channel 1; background ring 2``."""
        names = ["the segmented channel" if c is None else f"channel {c}" for c in self.channels]
        ring = f"background ring {self.ring} voxels" if self.ring else "no background ring"
        return f"intensity of {', '.join(names)}; {ring}"

    @property
    def layout(self) -> dict[str, object]:
        """How the partial statistics are laid out (recorded with a run's resume key)."""
        return {"channels": [c if c is not None else "input" for c in self.channels], "ring": self.ring}


def measured(cfg: Config, vol: InputVolume) -> Measure | None:
    """``cfg.objects`` checked against the input (``vol``, as the network reads it): what is measured,
    or None. A channel the input does not have is an :class:`InputError` saying which it has."""
    obj = cfg.objects
    channels: list[int | None] = [None] if obj.intensity and vol.channels == 1 else []
    for c in obj.channels:
        if c == vol.channel:
            continue  # the segmented channel, measured already (or not asked for)
        try:  # each format's own channels: a c axis, BigDataViewer setups, Imaris channels
            other = open_input(cfg.input.model_copy(update={"channel": c}))
        except InputError as e:
            raise InputError(f"objects.channels names channel {c}, which the input cannot give ({e}); "
                             "name channels the input has, or remove objects.channels") from None
        if other.shape != vol.shape or other.channels != 1:
            raise InputError(f"objects.channels: channel {c} of {other.where} is {list(other.shape)} x "
                             f"{other.channels} channel(s), the segmented one {list(vol.shape)}; name channels "
                             "of the segmented image")
        channels.append(c)
    if not channels:
        return None
    return Measure(tuple(channels), tuple("" if c is None else f"_c{c}" for c in channels), obj.ring)
