# Shared by the command-line tests: expect_error MESSAGE PROGRAM ARGS... runs the program and
# fails the test unless it exits with status 2 and prints MESSAGE on stderr. Needs $tmp.
expect_error() {
  local msg="$1"; shift
  local rc=0
  "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
  if [[ $rc -ne 2 ]] || ! grep -qF -- "$msg" "$tmp/err"; then
    echo "FAIL: $* gave exit $rc, expected 2 and: $msg"; cat "$tmp/err"; exit 1
  fi
}
