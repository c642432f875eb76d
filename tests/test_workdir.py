"""One workdir, one writer: the lock `fourm train` and `fourm tokenizer train` hold."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from fourm import workdir as workdir_lib
from fourm.errors import UsageError


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
  first = workdir_lib.WorkdirLock(str(tmp_path / "run"), "fourm train").acquire()
  with pytest.raises(UsageError, match=rf"is in use by fourm train \(host .+, pid "
                                       rf"{os.getpid()}, since "):
    workdir_lib.WorkdirLock(str(tmp_path / "run"), "fourm tokenizer train").acquire()
  first.release()
  second = workdir_lib.WorkdirLock(str(tmp_path / "run"), "fourm train").acquire()
  assert second.held and second.previous is None  # the first one finished cleanly
  second.release()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
  run = str(tmp_path / "run")
  holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import sys, time
      from fourm import workdir
      workdir.WorkdirLock({run!r}, "fourm train").acquire()
      print("held", flush=True)
      time.sleep(60)
  """)], stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UsageError, match=f"pid {holder.pid}"):
      workdir_lib.WorkdirLock(run, "fourm train").acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  finally:
    holder.kill()
  said = []
  with workdir_lib.exclusive(run, "fourm train", log=said.append) as lock:
    assert lock.previous["pid"] == holder.pid
  assert len(said) == 1 and f"pid {holder.pid}" in said[0] and "no longer runs" in said[0]


def test_a_workdir_that_cannot_be_made_is_one_clear_error(tmp_path):
  # A file where a folder should be fails for every user, root included (who may write
  # into read-only folders).
  (tmp_path / "a_file").write_text("")
  with pytest.raises(UsageError, match="a_file/run: cannot create it .Not a directory"):
    workdir_lib.WorkdirLock(str(tmp_path / "a_file" / "run"), "fourm train").acquire()
