"""``make bench``: every benchmark, each figure beside the anchor measured in the same run.

``python -m bench`` runs the agent benchmarks, pod start latency per runtime (``runtimes``), the
neighbour benchmarks (``mesh``: discovery, death detection, session throughput), supernode
failover (``supernode``), the MQTT bridge beside mosquitto's own (``mqtt``) and the link
benchmarks on 32 KiB per cell; ``python -m bench --full`` runs the links on 256 KiB,
three runs per cell (about 30 minutes on 2 cores), the figures in docs/links.md.
"""

from __future__ import annotations

import sys

from bench import agent, arq, mesh, mqtt, runtimes, supernode


def main() -> None:
    """Run the agent benchmarks, pod start per runtime, mesh, supernode, MQTT, then links."""
    agent.main()
    print()
    runtimes.main()
    print()
    quick = "--full" not in sys.argv[1:]
    mesh.main(quick=quick)
    print()
    supernode.main(quick=quick)
    print()
    mqtt.main(quick=quick)
    print()
    arq.main([] if "--full" in sys.argv[1:] else ["--quick"])


if __name__ == "__main__":
    main()
