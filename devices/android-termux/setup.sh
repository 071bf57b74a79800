#!/data/data/com.termux/files/usr/bin/sh
# Installs the FleetNAS agent in Termux and writes ~/start-agent.sh.
set -eu
pkg update -y
# ONNX Runtime from Termux's own package: PyPI has no wheel that installs under Termux.
pkg install -y python python-numpy python-grpcio python-psutil python-onnxruntime termux-api
HERE=$(cd "$(dirname "$0")/../.." && pwd)
# grpcio pinned to Termux's own: pip would otherwise take the newest grpcio-health-checking, which needs a newer
# grpcio than Termux packages, and build that grpcio from source on the phone.
GRPCIO=$(python -c 'import grpc; from importlib.metadata import version; print(version("grpcio"))') || {
    echo "error: Termux's python-grpcio does not import (see 'python -c \"import grpc\"'); after a Python upgrade, 'pkg upgrade python-grpcio' may be needed" >&2
    exit 1
}
pip install --no-build-isolation "$HERE" "grpcio==$GRPCIO"
python -c 'import onnxruntime' 2>/dev/null || echo "warning: ONNX Runtime does not import (see 'python -c \"import onnxruntime\"'); the agent will refuse ONNX models until it does (after a Python upgrade, 'pkg upgrade python-onnxruntime' may be needed)" >&2
mkdir -p ~/.config/fleetnas
[ -f ~/.config/fleetnas/token ] || python -c 'import secrets; print(secrets.token_urlsafe(32))' > ~/.config/fleetnas/token
chmod 600 ~/.config/fleetnas/token
cat > ~/start-agent.sh <<'SCRIPT'
#!/data/data/com.termux/files/usr/bin/sh
termux-wake-lock
ADDR=$(ip -4 addr show wlan0 2>/dev/null | sed -n 's/.*inet \([0-9.]*\).*/\1/p')
[ -n "$ADDR" ] || echo "no Wi-Fi address on wlan0: serving on 127.0.0.1, which the farm reaches only through 'adb forward'" >&2
exec fleetnas-agent serve --host "${ADDR:-127.0.0.1}" --port 50051 --label "$(getprop ro.product.model | tr ' ' '-')" \
    --token-file ~/.config/fleetnas/token --cache-max-mb 512
SCRIPT
chmod +x ~/start-agent.sh
echo "done: start the agent with ~/start-agent.sh; the token is in ~/.config/fleetnas/token"
