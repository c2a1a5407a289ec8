"""The tests' own account of what a rotation carries (docs/capture-format.md), written apart from
icetools.rotation.CarriedState so that the two can be checked against each other: each online
host's latest MON_STATS, each job not done its MON_GET_CS and MON_JOB_BEGIN, each running local
job its MON_LOCAL_JOB_BEGIN; in the order received."""

from __future__ import annotations

from icetools import messages as m

Entry = tuple[int, float, bytes]  # (sequence number, time received, frame)


class CarriedFrames:
    def __init__(self) -> None:
        self.hosts: dict[int, Entry] = {}
        self.jobs: dict[int, list[Entry]] = {}
        self.local: dict[int, tuple[int, Entry]] = {}

    def clear(self) -> None:
        """A (re)connection: the scheduler starts over, nothing before it is carried."""
        self.hosts.clear()
        self.jobs.clear()
        self.local.clear()

    def feed(self, entry: Entry, protocol: int) -> None:
        try:
            msg = m.decode(entry[2], protocol, monitor=True)
        except Exception:  # noqa: BLE001 - not carried, as the Monitor skips it
            return
        if isinstance(msg, m.MonStats):
            if msg.offline:
                self.hosts.pop(msg.host_id, None)
                for job_id in [j for j, (h, _) in self.local.items() if h == msg.host_id]:
                    del self.local[job_id]
            else:
                self.hosts[msg.host_id] = entry
        elif isinstance(msg, m.MonGetCS):
            self.jobs[msg.job_id] = [entry]
        elif isinstance(msg, m.MonJobBegin):
            self.jobs.setdefault(msg.job_id, []).append(entry)
        elif isinstance(msg, m.MonJobDone):
            self.jobs.pop(msg.job_id, None)
        elif isinstance(msg, m.MonLocalJobBegin):
            self.local[msg.job_id] = (msg.host_id, entry)
        elif isinstance(msg, m.JobLocalDone):
            self.local.pop(msg.job_id, None)

    def kept(self) -> list[Entry]:
        """What a rotation now carries, in the order received."""
        return sorted([*self.hosts.values(), *(e for es in self.jobs.values() for e in es),
                       *(e for _, e in self.local.values())])
