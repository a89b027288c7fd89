#!/usr/bin/env bash
# `make lint`: buf breaking against the previous commit on main. On main (the
# branch checked out, or a detached HEAD at main's tip, as CI may have) that is
# HEAD~1; on any other branch it is the main commit the branch grew from (its
# merge-base with main, or origin/main in a clone), so commits that main gained
# since do not count as this branch deleting them. Skipped, saying why, when
# that commit is missing (shallow clone, no main) or has no buf.yaml yet: the
# commit that brings buf.yaml is the contract's first version.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:?path to buf}
main=$(git rev-parse -q --verify main || git rev-parse -q --verify origin/main || true)
if [ -z "$main" ]; then
  echo "buf breaking: skipped (no main branch to compare with)"
  exit 0
fi
branch=$(git symbolic-ref -q --short HEAD || true)
if [ "$branch" = main ] || { [ -z "$branch" ] && [ "$(git rev-parse HEAD)" = "$main" ]; }; then
  base=$(git rev-parse -q --verify 'HEAD~1^{commit}' || true)
else
  base=$(git merge-base HEAD "$main" || true)
fi
if [ -z "$base" ]; then
  echo "buf breaking: skipped (the previous commit on main is not in this clone)"
  exit 0
fi
if ! git cat-file -e "$base:buf.yaml" 2>/dev/null; then
  echo "buf breaking: skipped ($(git rev-parse --short "$base") has no buf.yaml: the contract starts here)"
  exit 0
fi
echo "buf breaking: against $(git rev-parse --short "$base")"
"$BUF" breaking --against ".git#ref=$base"
