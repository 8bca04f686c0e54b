"""``make bench``: every benchmark, each figure beside the anchor measured in the same run.

``python -m bench`` runs the agent benchmarks, pod start latency per runtime (``runtimes``), the
neighbour benchmarks (``mesh``: discovery, death detection, session throughput) and the link
benchmarks on 32 KiB per cell; ``python -m bench --full`` runs the links on 256 KiB,
three runs per cell (about 30 minutes on 2 cores), the figures in docs/links.md.
"""

from __future__ import annotations

import sys

from bench import agent, arq, mesh, runtimes


def main() -> None:
    """Run the agent benchmarks, pod start per runtime, the mesh, then the links (ARQ)."""
    agent.main()
    print()
    runtimes.main()
    print()
    mesh.main(quick="--full" not in sys.argv[1:])
    print()
    arq.main([] if "--full" in sys.argv[1:] else ["--quick"])


if __name__ == "__main__":
    main()
