"""The demo's lockstep: two trainings of different speeds stop at the same step when the deadline comes."""

from __future__ import annotations

import threading
import time

from tenfold.speech.demo import _Lockstep


def test_lockstep_stops_a_fast_and_a_slow_process_at_the_same_step(tmp_path):
    deadline = time.time() + 0.4
    done: dict[int, int] = {}
    peak_lead = {0: 0, 3: 0}

    def train(order: int, peer: int, seconds_per_step: float) -> None:
        lockstep = _Lockstep(str(tmp_path), order, peer, deadline, patience_s=10.0)
        steps = 0
        while steps < 10_000:
            lockstep.before_step(steps)
            peer_steps = lockstep._read(f"progress{peer}") or 0
            peak_lead[order] = max(peak_lead[order], steps - peer_steps)
            time.sleep(seconds_per_step)
            steps += 1
            if lockstep.after_step(steps):
                break
        done[order] = steps

    threads = [threading.Thread(target=train, args=(0, 3, 0.002)), threading.Thread(target=train, args=(3, 0, 0.01))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert done[0] == done[3] and 10 < done[0] < 10_000  # stopped by the deadline, at equal counts
    assert max(peak_lead.values()) <= 1  # the fast one never ran more than one step ahead
