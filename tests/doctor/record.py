"""Record Envoy's admin output for every live case into `data/` (the unit tests read these files).

    python -m tests.doctor.record [CASE ...]

Each case boots the real rig of `tests.doctor.rig`, sends five requests and saves `/stats` and `/clusters`
as Envoy printed them, with what the client and the EPP saw in `<case>.meta.json`. For the Istio-native
healthy gateway it saves `/config_dump` too, less its bootstrap part (84 KB of extension names; the
static resources it repeats are in the other parts).
"""

from __future__ import annotations

import asyncio
import json
import sys

from tests.doctor.rig import CASES, DATA, booted_case


async def record(names: set[str]) -> None:
    for case in CASES:
        if names and case.name not in names:
            continue
        async with booted_case(case) as rig:
            (DATA / f"{case.name}.stats.txt").write_text(rig.read_admin("stats"))
            (DATA / f"{case.name}.clusters.txt").write_text(rig.read_admin("clusters"))
            if case.name == "healthy":
                (DATA / "healthy.stats.json").write_text(rig.read_admin("stats?format=json"))
            if case.name == "istio-native-healthy":
                (DATA / f"{case.name}.config_dump.json").write_text(
                    _without_bootstrap(rig.read_admin("config_dump"))
                )
            meta = {
                "case": case.name,
                "client_statuses": rig.statuses,
                "epp_streams": rig.epp.servicer.streams if rig.epp.servicer else None,
                "epp_messages": rig.epp.servicer.messages if rig.epp.servicer else None,
                "model_server_hits": len(rig.model.hits),
                "epp_cluster": case.epp_cluster,
                "stat_prefix": case.stat_prefix,
                "profile": case.profile,
            }
            (DATA / f"{case.name}.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            print(json.dumps(meta))


def _without_bootstrap(text: str) -> str:
    dump = json.loads(text)
    dump["configs"] = [c for c in dump["configs"] if not c["@type"].endswith("BootstrapConfigDump")]
    return json.dumps(dump, indent=1) + "\n"


if __name__ == "__main__":
    asyncio.run(record(set(sys.argv[1:])))
