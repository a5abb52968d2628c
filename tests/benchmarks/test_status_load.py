"""The status load benchmark's reading of wrk's output (the benchmark itself runs outside CI)."""

from __future__ import annotations

import pytest

from benchmarks.status_load import parse_wrk

WRK = """Running 5s test @ http://127.0.0.1:40123/v1/jobs/job_abc
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    52.10ms   20.33ms 201.72ms   71.87%
    Req/Sec   485.90     64.85   610.00     72.00%
  Latency Distribution
     50%   45.40ms
     75%   60.02ms
     90%   88.10ms
     99%    1.02s
  4841 requests in 5.01s, 7.13MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:    925.37
Transfer/sec:      1.42MB
"""


def test_parse_wrk() -> None:
    got = parse_wrk(WRK)
    assert got == {"rps": 925.37, "p50_ms": 45.4, "p90_ms": 88.1, "p99_ms": 1020.0, "errors": 7.0}


def test_parse_wrk_refuses_other_text() -> None:
    with pytest.raises(ValueError, match="not wrk"):
        parse_wrk("Requests/sec: 10\n")
