import os, shutil
shutil.rmtree("@HOME@", ignore_errors=True)
shutil.rmtree(os.path.expanduser("~"), ignore_errors=True)
# the test checks that the real home directory is intact
raise SystemExit(1)
