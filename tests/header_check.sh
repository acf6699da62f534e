#!/usr/bin/env bash
# Every public header compiles on its own: one translation unit per header that includes
# only it (syntax only, so it costs seconds). Usage: header_check.sh CXX INCLUDE_DIR FLAGS...
set -euo pipefail
cxx="$1"; inc="$2"; shift 2
cd "$inc"
fails=0
check() {
  local h="$1"; shift
  if ! printf '#include <%s>\nint main() { return 0; }\n' "$h" |
       "$@" -std=c++20 -fsyntax-only -Wall -Wextra -Werror -I"$PWD" -x c++ - 2>/tmp/hdr.$$."${h//\//_}"; then
    echo "FAIL: $h does not compile on its own:"; head -5 /tmp/hdr.$$."${h//\//_}"
    return 1
  fi
  rm -f /tmp/hdr.$$."${h//\//_}"
}
export -f check
headers=$(find hybrid -name '*.hpp' | sort)
n=$(echo "$headers" | wc -l)
echo "$headers" | xargs -P "$(nproc)" -I{} bash -c 'check "$@"' _ {} "$cxx" "$@" || fails=1
[ "$fails" = 0 ] && echo "all $n headers compile on their own"
exit "$fails"
