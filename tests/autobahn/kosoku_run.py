"""Runs Autobahn|Testsuite cases with kosoku against a server; prints one JSON line of results.

Called by tests/integration/autobahn.rs, which owns the server and compares the results with
tests/autobahn/expected.json. Through kosoku's public Python API rather than its CLI so that
the results come back on stdout, not as an HTML/JSON report tree on disk.

usage: kosoku_run.py VERSION URL CONCURRENCY CASE...   (a CASE is an id or a glob: 1.1.1, 9.*)
exit: 0 results printed (whatever the verdicts: the caller judges them); 3 kosoku missing;
      4 kosoku of another version than VERSION (the committed verdicts are that version's).
"""

import asyncio
import importlib.metadata
import json
import os
import sys


def main() -> int:
    version, url, concurrency, *cases = sys.argv[1:]
    try:
        installed = importlib.metadata.version("kosoku")
    except importlib.metadata.PackageNotFoundError:
        print(f"kosoku is not installed for {sys.executable}", file=sys.stderr)
        return 3
    if installed != version:
        print(f"kosoku {installed} is installed, {version} is pinned", file=sys.stderr)
        return 4
    from kosoku import FailureError, run_fuzzingclient

    async def run():
        try:
            return await run_fuzzingclient(url, cases, None, int(concurrency))
        except FailureError as failure:
            # A case outside OK/NON-STRICT/INFORMATIONAL: the caller decides whether it was expected.
            return failure.results

    results = asyncio.run(run())
    summary = {
        r.case_id: {
            "behavior": r.behavior.value,
            "behaviorClose": r.behavior_close.value,
            "remoteCloseCode": r.remote_close_code,
            "duration": r.duration,
        }
        for r in results
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # Not sys.exit: kosoku 0.1.0 sometimes aborts (SIGABRT, nothing on stderr) while the
    # interpreter finalizes after a run, results already printed; os._exit skips finalization.
    os._exit(code)
