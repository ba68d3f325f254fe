"""Stand-in for Slicer's ``PythonSlicer`` launcher: it starts the real command as a child that shares
its stdout/stderr pipes, prints ``launcher-child <pid>``, and waits for it (as the real launcher does,
killing the launcher alone leaves the child running and the pipes open).

Usage: ``python fake_pythonslicer.py <python> <script or -m module> <args...>``
"""
import subprocess
import sys

child = subprocess.Popen(sys.argv[1:])
print(f"launcher-child {child.pid}", flush=True)
sys.exit(child.wait())
