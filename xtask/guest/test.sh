# Mode "test" (cargo xtask integration-test vm): bring the lab up, run every executable in
# /mnt/host/tests with cwd=/mnt/host, DETRACE_BIN and DETRACE_VM=1; log and exit code of each go
# to /mnt/host/results/<name>.{log,rc}; results/done when all have run.
. /mnt/host/guest/lib.sh
R=/mnt/host/results
mkdir -p $R
lab_up
for t in /mnt/host/tests/*; do
  [ -f "$t" ] || continue
  name=$(basename "$t")
  mark test-begin $name
  (cd /mnt/host && DETRACE_BIN=/mnt/host/detrace DETRACE_VM=1 \
    timeout -k 5 ${TEST_TIMEOUT:-300} "$t") > $R/$name.log 2>&1
  rc=$?
  echo $rc > $R/$name.rc
  mark test-end $name rc=$rc
done
sync
touch $R/done
sync
mark tests-done
