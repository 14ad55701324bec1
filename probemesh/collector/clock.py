"""Each agent's clock offset, estimated NTP-style from echoed heartbeats.

The collector stamps a clock probe (Welcome, then every heartbeat) with its
time t1. The agent receives it at t2 on its own clock and answers at t3 with
t1 echoed and the time it held it (t3 - t2). The collector receives the answer
at t4. As in NTP (RFC 5905), the offset of the agent's clock is
((t2 - t1) + (t3 - t4)) / 2 and the round trip is (t4 - t1) - (t3 - t2); the
offset is off by at most half the round trip's asymmetry. Of the last few
samples, the one with the shortest round trip wins (NTP's clock filter): queueing
delay only ever lengthens a round trip, so the shortest is the least distorted.
A sample is never further than half its round trip from the true offset, so a
sample whose bound does not meet the estimate's says the agent's clock moved
(set by hand, a VM resumed): the older samples are dropped and it is taken at
once, however far apart the clock probes are.

Results carry the agent's timestamps. When the offset exceeds the threshold
(default 1 s), ingest corrects every result of that agent onto the collector's
clock and counts it; within the threshold, timestamps stay as sent, because
correcting by a noise-sized estimate would only add noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

CLOCK_ECHO = "clock_echo"  # protocol feature name, in Hello.features and Welcome.features
SAMPLES = 8
MAX_HELD_SECONDS = 60.0  # an echo held longer than this says nothing useful
STEP_SLACK = 0.001  # seconds by which two bounds may miss each other from rounding alone


@dataclass
class ClockEstimate:
    """The offset of one agent's clock from the collector's (agent minus collector)."""

    offset: float | None = None
    rtt: float | None = None
    # The correction ingest subtracts from the agent's timestamps: the offset when
    # it exceeds the threshold, else 0.
    correction: float = 0.0
    skewed: bool = False
    # (offset, round trip) of the last SAMPLES echoes; a list, as a deque costs
    # 600 bytes for every agent however few it holds
    samples: list[tuple[float, float]] = field(default_factory=list)

    def add(self, t1: float, t2: float, t3: float, t4: float, threshold: float) -> bool:
        """Take one echo (t1, t4 on the collector's clock; t2, t3 on the agent's).

        Returns False, changing nothing, for a sample that cannot be right.
        """
        rtt = (t4 - t1) - (t3 - t2)
        if not all(math.isfinite(t) for t in (t1, t2, t3, t4)) or rtt < -0.001:
            return False
        rtt = max(rtt, 0.0)
        offset = ((t2 - t1) + (t3 - t4)) / 2
        if (
            self.offset is not None
            and self.rtt is not None
            and abs(offset - self.offset) > (rtt + self.rtt) / 2 + STEP_SLACK
        ):
            self.samples.clear()  # the agent's clock moved
        self.samples.append((offset, rtt))
        if len(self.samples) > SAMPLES:
            del self.samples[0]
        self.offset, self.rtt = min(self.samples, key=lambda s: s[1])
        self.skewed = abs(self.offset) > threshold
        self.correction = self.offset if self.skewed else 0.0
        return True
