#!/usr/bin/env bash
# Make sure Fashion-MNIST is on this machine, in the order the README promises:
# already there -> the Debian package (where apt is available) -> the official download.
# `selfsup data prepare` prints what to do when all of them fail.
set -u
selfsup=${1:-selfsup}
if "$selfsup" data prepare fashion_mnist --quiet 2>/dev/null; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null 2>&1 && sudo="sudo"; }
  if [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; then
    echo "Installing Fashion-MNIST from the Debian package dataset-fashion-mnist ..."
    $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist \
      && "$selfsup" data prepare fashion_mnist --quiet && exit 0
    echo "apt-get could not install dataset-fashion-mnist; trying the official download."
  fi
fi
exec "$selfsup" data prepare fashion_mnist --download
