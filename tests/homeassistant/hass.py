"""Drives a Home Assistant core for the Rust tests (tests/common/homeassistant.rs).

Runs with the Python of Home Assistant's virtualenv (target/ha-venv), so it
has aiohttp for the websocket API; the REST calls use the standard library.
The Rust side starts and kills `hass` itself (in a process group of its own);
this script only prepares the configuration directory and talks to the API:

  prepare  CONFIG_DIR HTTP_PORT
      configuration.yaml (HTTP on 127.0.0.1:HTTP_PORT, fixed location, no
      default_config) and an onboarding store whose core_config step is done:
      that step starts config flows that want the internet.
  onboard  CONFIG_DIR HTTP_PORT MQTT_PORT [TIMEOUT_S]
      Waits for the API, creates the owner over the onboarding REST API,
      writes a long-lived token to CONFIG_DIR/token, adds the MQTT
      integration (broker 127.0.0.1:MQTT_PORT, discovery on, prefix
      homeassistant), then waits until Home Assistant is running and an MQTT
      message it publishes comes back to it. With a token already there (a
      restart) only the waiting is done.
  states   CONFIG_DIR HTTP_PORT                  GET /api/states
  registry CONFIG_DIR HTTP_PORT                  {"devices": [...], "entities": [...]}
  call     CONFIG_DIR HTTP_PORT DOMAIN SERVICE JSON_DATA
      POST /api/services/DOMAIN/SERVICE: prints {"status": N, "body": ...}
  ws       CONFIG_DIR HTTP_PORT JSON_COMMAND     one websocket command's result

Results go to stdout as JSON; failures to stderr with a non-zero exit.
"""

import asyncio
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

USERNAME = "fieldgate"
PASSWORD = "fieldgate-test-password"
PING_TOPIC = "fieldgate-harness/ping"


class Api:
    def __init__(self, config_dir, port):
        self.config_dir = Path(config_dir)
        self.port = int(port)
        self.base = f"http://127.0.0.1:{self.port}"
        self._token = None

    @property
    def client_id(self):
        return f"{self.base}/"

    @property
    def token(self):
        if self._token is None:
            self._token = (self.config_dir / "token").read_text().strip()
        return self._token

    def request(self, method, path, body=None, form=None, auth=True, timeout=30):
        """(status, parsed JSON body or text) of one request; never raises on HTTP errors."""
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def ok(self, method, path, **kwargs):
        status, body = self.request(method, path, **kwargs)
        if not 200 <= status < 300:
            raise SystemExit(f"{method} {path}: HTTP {status}: {body}")
        return body

    async def ws(self, commands, on_open=None):
        """Send each command (dicts without id) over one websocket; the list of results."""
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{self.base}/api/websocket", max_msg_size=0) as sock:
                await ws_auth(sock, self.token)
                results = []
                for n, command in enumerate(commands, start=1):
                    await sock.send_json({"id": n, **command})
                    while True:
                        msg = await sock.receive_json(timeout=30)
                        if msg.get("id") == n and msg.get("type") == "result":
                            break
                    if not msg.get("success"):
                        raise SystemExit(f"websocket {command}: {msg.get('error')}")
                    results.append(msg.get("result"))
                return results


async def ws_auth(sock, token):
    hello = await sock.receive_json(timeout=30)
    if hello.get("type") != "auth_required":
        raise SystemExit(f"websocket: unexpected greeting {hello}")
    await sock.send_json({"type": "auth", "access_token": token})
    reply = await sock.receive_json(timeout=30)
    if reply.get("type") != "auth_ok":
        raise SystemExit(f"websocket auth: {reply}")


def prepare(config_dir, http_port):
    config_dir = Path(config_dir)
    (config_dir / ".storage").mkdir(parents=True, exist_ok=True)
    (config_dir / "configuration.yaml").write_text(
        f"""homeassistant:
  name: fieldgate test
  latitude: 52.52
  longitude: 13.40
  elevation: 34
  unit_system: metric
  time_zone: UTC
  country: DE
  currency: EUR
  language: en
http:
  server_host: 127.0.0.1
  server_port: {int(http_port)}
logger:
  default: warning
  logs:
    homeassistant.components.mqtt.discovery: debug
    # No libturbojpeg and no zlib-ng here; neither matters to these tests.
    homeassistant.components.camera.img_util: critical
    aiohttp_fast_zlib: error
"""
    )
    onboarding = config_dir / ".storage" / "onboarding"
    if not onboarding.exists():
        onboarding.write_text(
            json.dumps(
                {
                    "version": 4,
                    "minor_version": 1,
                    "key": "onboarding",
                    "data": {"done": ["core_config"]},
                }
            )
        )


def wait_for(what, deadline, probe, interval=0.25):
    """Calls probe() until it returns something truthy; exits with `what` at the deadline."""
    last = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except (OSError, urllib.error.URLError, asyncio.TimeoutError, ValueError) as e:
            last = e
        if time.monotonic() >= deadline:
            raise SystemExit(f"timed out waiting for {what} (last error: {last!r})")
        time.sleep(interval)


def create_owner(api, deadline):
    """The onboarding REST steps; writes a long-lived token to CONFIG_DIR/token."""

    def onboarding_open():
        status, body = api.request("GET", "/api/onboarding", auth=False, timeout=5)
        return status == 200 and isinstance(body, list)

    wait_for("the onboarding API", deadline, onboarding_open)
    body = api.ok(
        "POST",
        "/api/onboarding/users",
        auth=False,
        body={
            "name": "Fieldgate Test",
            "username": USERNAME,
            "password": PASSWORD,
            "client_id": api.client_id,
            "language": "en",
        },
    )
    tokens = api.ok(
        "POST",
        "/auth/token",
        auth=False,
        form={
            "grant_type": "authorization_code",
            "code": body["auth_code"],
            "client_id": api.client_id,
        },
    )
    api._token = tokens["access_token"]
    api.ok("POST", "/api/onboarding/analytics")
    api.ok(
        "POST",
        "/api/onboarding/integration",
        body={"client_id": api.client_id, "redirect_uri": f"{api.base}/?auth_callback=1"},
    )
    [long_lived] = asyncio.run(
        api.ws(
            [
                {
                    "type": "auth/long_lived_access_token",
                    "client_name": "fieldgate tests",
                    "lifespan": 3650,
                }
            ]
        )
    )
    api._token = long_lived
    tmp = api.config_dir / "token.tmp"
    tmp.write_text(long_lived)
    tmp.replace(api.config_dir / "token")


def add_mqtt(api, mqtt_port):
    flow = api.ok("POST", "/api/config/config_entries/flow", body={"handler": "mqtt"})
    if flow.get("type") != "form" or flow.get("step_id") != "broker":
        raise SystemExit(f"MQTT config flow: unexpected first step {flow}")
    result = api.ok(
        "POST",
        f"/api/config/config_entries/flow/{flow['flow_id']}",
        body={"broker": "127.0.0.1", "port": int(mqtt_port)},
    )
    if result.get("type") != "create_entry":
        raise SystemExit(f"MQTT config flow did not create an entry: {result}")
    entry = result["result"]
    data = entry.get("data") or {}
    if data.get("discovery") is False:
        raise SystemExit(f"MQTT entry has discovery off: {entry}")


async def mqtt_round_trip(api, timeout):
    """True once a message published by Home Assistant comes back to it."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{api.base}/api/websocket") as sock:
            await ws_auth(sock, api.token)
            await sock.send_json({"id": 1, "type": "mqtt/subscribe", "topic": PING_TOPIC})
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            next_id = 2
            while loop.time() < deadline:
                await sock.send_json(
                    {
                        "id": next_id,
                        "type": "call_service",
                        "domain": "mqtt",
                        "service": "publish",
                        "service_data": {"topic": PING_TOPIC, "payload": "ping"},
                    }
                )
                next_id += 1
                end = min(deadline, loop.time() + 1.0)
                while (left := end - loop.time()) > 0:
                    try:
                        msg = await sock.receive_json(timeout=left)
                    except asyncio.TimeoutError:
                        break
                    if msg.get("id") == 1 and msg.get("type") == "result" and not msg["success"]:
                        raise ValueError(f"mqtt/subscribe: {msg.get('error')}")
                    if msg.get("id") == 1 and msg.get("type") == "event":
                        return True
            return False


def onboard(config_dir, http_port, mqtt_port, timeout="120"):
    api = Api(config_dir, http_port)
    deadline = time.monotonic() + float(timeout)
    if not (api.config_dir / "token").exists():
        create_owner(api, deadline)
        add_mqtt(api, mqtt_port)

    def running():
        status, body = api.request("GET", "/api/config", timeout=5)
        return status == 200 and isinstance(body, dict) and body.get("state") == "RUNNING"

    wait_for("Home Assistant to be running", deadline, running)

    def mqtt_works():
        left = deadline - time.monotonic()
        return left > 0 and asyncio.run(mqtt_round_trip(api, min(left, 10)))

    wait_for("an MQTT round trip through Home Assistant", deadline, mqtt_works, interval=0.5)


def states(config_dir, http_port):
    print(json.dumps(Api(config_dir, http_port).ok("GET", "/api/states")))


def registry(config_dir, http_port):
    devices, entities = asyncio.run(
        Api(config_dir, http_port).ws(
            [{"type": "config/device_registry/list"}, {"type": "config/entity_registry/list"}]
        )
    )
    print(json.dumps({"devices": devices, "entities": entities}))


def call(config_dir, http_port, domain, service, data):
    status, body = Api(config_dir, http_port).request(
        "POST", f"/api/services/{domain}/{service}", body=json.loads(data)
    )
    print(json.dumps({"status": status, "body": body}))


def ws(config_dir, http_port, command):
    [result] = asyncio.run(Api(config_dir, http_port).ws([json.loads(command)]))
    print(json.dumps(result))


COMMANDS = {
    "prepare": (prepare, 2, 2),
    "onboard": (onboard, 3, 4),
    "states": (states, 2, 2),
    "registry": (registry, 2, 2),
    "call": (call, 5, 5),
    "ws": (ws, 3, 3),
}


def main(argv):
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise SystemExit(__doc__)
    func, least, most = COMMANDS[argv[1]]
    args = argv[2:]
    if not least <= len(args) <= most:
        raise SystemExit(f"{argv[1]}: expected {least}..{most} arguments\n\n{__doc__}")
    func(*args)


if __name__ == "__main__":
    main(sys.argv)
