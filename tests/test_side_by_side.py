"""launch/side_by_side.py: jobs run at the same time, each log printed whole when its job
ends, and a failed job fails the whole."""

from __future__ import annotations

import importlib.util
import io
import os
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "side_by_side", os.path.join(ROOT, "launch", "side_by_side.py"))
side_by_side = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(side_by_side)


def test_jobs_overlap_and_each_log_prints_whole(tmp_path):
  out = io.StringIO()
  started = time.perf_counter()
  failed = side_by_side.run([("slow", "echo one; sleep 2; echo two"),
                             ("fast", "sleep 2; echo three && echo four")],
                            str(tmp_path), out=out)
  assert failed == []
  assert time.perf_counter() - started < 3.5  # one after the other would take 4 s
  text = out.getvalue()
  assert "one\ntwo\n" in text and "three\nfour\n" in text
  assert (tmp_path / "slow.log").read_text() == "one\ntwo\n"


def test_a_failed_job_is_named_and_the_others_still_finish(tmp_path):
  out = io.StringIO()
  failed = side_by_side.run([("bad", "echo oops >&2; exit 3"), ("good", "echo fine")],
                            str(tmp_path), out=out)
  assert failed == ["bad"]
  assert "[bad] FAILED (exit 3)" in out.getvalue() and "oops" in out.getvalue()
  assert (tmp_path / "good.log").read_text() == "fine\n"
  with pytest.raises(SystemExit, match="expected NAME=COMMAND"):
    side_by_side.parse_job("no command here")
