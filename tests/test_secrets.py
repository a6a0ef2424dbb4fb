"""Secrets (MQTT passwords, the store token) come from the config, a file or the environment, and
never show: not in logs at DEBUG (connect, refused login, reconnect, store refusing the token,
`--check`), not in retained status or registry payloads, not in config errors or reprs.

The end-to-end tests run the real `lifeline` agent and gateway processes against Mosquitto with
passwords and VictoriaMetrics behind a proxy that checks the token, as InfluxDB would.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge_agent.config import load_agent_config
from gateway.config import InfluxSettings, load_gateway_config
from lifeline.config import MqttSettings, read_secret_file
from lifeline.contract import Alert, Status, alert_topic, status_topic, summary_topic
from lifeline.errors import ConfigError
from simulators.servers import MosquittoServer, VictoriaMetricsServer
from tests.agent_harness import ROOT, ensure_precompiled, write_config
from tests.agent_harness import Publisher as RawPublisher
from tests.test_gateway_integration import Collector, Publisher, eventually, recent_ms

P = "lifeline/v1"
WAIT_S = 30.0
#: Distinct, greppable secrets: none of them may ever appear where it must not.
GW_PASSWORD = "gwPW-4f1e9c3a77"
AGENT_PASSWORD = "agPW-8d02b6e511"
WRONG_PASSWORD = "wrongPW-5a7713c0d2"
TOKEN = "tok-9b44e0c1f2d3a8"
WRONG_TOKEN = "tok-wrong-1c55d3"
SECRETS = (GW_PASSWORD, AGENT_PASSWORD, WRONG_PASSWORD, TOKEN, WRONG_TOKEN)


def assert_no_secret(text: str | bytes, where: str) -> None:
    blob = text if isinstance(text, bytes) else text.encode()
    for secret in SECRETS:
        assert secret.encode() not in blob, f"{where} shows the secret {secret!r}"


# ------------------------------------------------------------------ each secret from each source

AGENT_HEAD = '[agent]\nid = "yz-a"\ndistrict = "yuzhong"\ntownship = "jfb"\n'


@pytest.mark.parametrize("source", ["inline", "file", "env"])
def test_the_agents_mqtt_password_comes_from_the_config_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    secret = tmp_path / "mqtt.password"
    secret.write_text(AGENT_PASSWORD + "\n")
    key = {"inline": f'password = "{AGENT_PASSWORD}"', "file": f'password_file = "{secret}"', "env": ""}
    monkeypatch.setenv("LIFELINE_MQTT_PASSWORD", AGENT_PASSWORD if source == "env" else "")
    path = tmp_path / "agent.toml"
    path.write_text(AGENT_HEAD + f'[mqtt]\nusername = "yz-a"\n{key[source]}\n')
    assert load_agent_config(path).mqtt.resolved_password() == AGENT_PASSWORD


@pytest.mark.parametrize("source", ["inline", "file", "env"])
def test_the_gateways_password_and_token_come_from_the_config_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    (tmp_path / "pw").write_text(GW_PASSWORD)
    (tmp_path / "token").write_text(f"  {TOKEN}  \nsecond line is ignored\n")
    mqtt = {"inline": f'password = "{GW_PASSWORD}"', "file": f'password_file = "{tmp_path / "pw"}"', "env": ""}
    influx = {"inline": f'token = "{TOKEN}"', "file": f'token_file = "{tmp_path / "token"}"', "env": ""}
    monkeypatch.setenv("LIFELINE_MQTT_PASSWORD", GW_PASSWORD if source == "env" else "")
    monkeypatch.setenv("LIFELINE_INFLUX_TOKEN", TOKEN if source == "env" else "")
    path = tmp_path / "gateway.toml"
    path.write_text(f'[mqtt]\nusername = "gateway"\n{mqtt[source]}\n\n[influx]\n{influx[source]}\n')
    config = load_gateway_config(path)
    assert config.mqtt.resolved_password() == GW_PASSWORD
    assert config.influx.resolved_token() == TOKEN


def test_inline_beats_file_beats_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("from-file")
    monkeypatch.setenv("LIFELINE_MQTT_PASSWORD", "from-env")
    monkeypatch.setenv("LIFELINE_INFLUX_TOKEN", "from-env")
    assert MqttSettings(password="inline", password_file=tmp_path / "pw").resolved_password() == "inline"
    assert MqttSettings(password_file=tmp_path / "pw").resolved_password() == "from-file"
    assert MqttSettings().resolved_password() == "from-env"
    assert InfluxSettings(token="inline", token_file=tmp_path / "pw").resolved_token() == "inline"
    assert InfluxSettings(token_file=tmp_path / "pw").resolved_token() == "from-file"
    assert InfluxSettings().resolved_token() == "from-env"


@pytest.mark.parametrize(("content", "problem"), [(b"", "is empty"), (b"\n\n", "is empty"),
                                                  (b"\xff\xfe" + TOKEN.encode(), "not UTF-8")])
def test_a_bad_secret_file_is_an_error_naming_the_key_and_not_the_content(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        read_secret_file(path, "influx.token_file")
    assert "influx.token_file" in str(caught.value) and problem in str(caught.value)
    assert_no_secret(str(caught.value), "the error")
    config = tmp_path / "gateway.toml"  # found by the loader (so by `--check`), not at start-up
    config.write_text(f'[mqtt]\npassword_file = "{tmp_path / "missing"}"\n[influx]\ntoken_file = "{path}"\n')
    with pytest.raises(ConfigError) as at_load:
        load_gateway_config(config)
    message = str(at_load.value)
    assert "mqtt: password_file: cannot read secret" in message and "influx: token_file" in message
    assert_no_secret(message, "the error")


# ------------------------------------------------------------------ config objects and errors


def test_secrets_are_masked_in_repr_str_and_dumps(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[mqtt]\npassword = "{GW_PASSWORD}"\n[influx]\ntoken = "{TOKEN}"\n')
    config = load_gateway_config(path)
    for shown in (repr(config), str(config), str(config.model_dump()), config.model_dump_json(),
                  repr(config.mqtt), repr(config.influx)):
        assert_no_secret(shown, "the settings object")
    agent = tmp_path / "agent.toml"
    agent.write_text(AGENT_HEAD + f'[mqtt]\npassword = "{AGENT_PASSWORD}"\n')
    assert_no_secret(repr(load_agent_config(agent)) + load_agent_config(agent).model_dump_json(), "agent")


BAD_CONFIGS = {
    "agent mqtt url with a password": (
        "agent", AGENT_HEAD + f'[mqtt]\nurl = "mqtt://yz-a:{AGENT_PASSWORD}@127.0.0.1:1883"\n', "mqtt.url"),
    "agent raw_mqtt url with a password": (
        "agent", AGENT_HEAD + f'[raw_mqtt]\nurl = "mqtts://u:{AGENT_PASSWORD}@broker:8883"\n', "raw_mqtt.url"),
    "url with a password and a bad scheme": (
        "agent", AGENT_HEAD + f'[mqtt]\nurl = "tcp://yz-a:{AGENT_PASSWORD}@127.0.0.1"\n', "mqtt.url"),
    "url with a password and a bad port": (
        "gateway", f'[mqtt]\nurl = "mqtt://gw:{GW_PASSWORD}@127.0.0.1:port"\n', "mqtt.url"),
    "influx url with the token": (
        "gateway", f'[influx]\nurl = "http://lifeline:{TOKEN}@127.0.0.1:8086"\n', "influx.url"),
    "password of the wrong type": ("agent", AGENT_HEAD + "[mqtt]\npassword = 48151623\n", "mqtt.password"),
    "token of the wrong type": ("gateway", f'[influx]\ntoken = ["{TOKEN}"]\n', "influx.token"),
    "an error elsewhere beside a secret": (
        "gateway", f'[mqtt]\npassword = "{GW_PASSWORD}"\nkeepalive_s = 1\n[influx]\ntoken = "{TOKEN}"\n',
        "mqtt.keepalive_s"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_config_error_names_the_key_but_never_shows_a_secret(tmp_path: Path, case: str) -> None:
    program, text, key = BAD_CONFIGS[case]
    path = tmp_path / f"{program}.toml"
    path.write_text(text)
    load = load_agent_config if program == "agent" else load_gateway_config
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert key in message and str(path) in message
    assert "48151623" not in message
    chained: BaseException | None = caught.value
    while chained is not None:  # nothing that a traceback would print may quote the input
        assert_no_secret(str(chained), f"the error chain of {case!r}")
        assert "input_value" not in str(chained)
        chained = chained.__cause__ or chained.__context__


def test_check_reports_a_url_with_credentials_without_showing_them(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[mqtt]\nurl = "mqtt://gateway:{GW_PASSWORD}@127.0.0.1:1883"\n'
                    f'[influx]\nurl = "https://x:{TOKEN}@store:8086"\n')
    done = subprocess.run(lifeline("gateway", "--check", "--config", str(path)), capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode != 0
    assert "mqtt.url" in done.stderr and "influx.url" in done.stderr and "***@" in done.stderr
    assert_no_secret(done.stdout + done.stderr, "lifeline gateway --check")


# ------------------------------------------------------------------ the real processes


def lifeline(*args: str) -> list[str]:
    return [sys.executable, "-m", "lifeline.cli", "--log-level", "debug", *args]


class LoggedProcess:
    """A `lifeline` process at DEBUG whose stderr lines are kept and can be waited for."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, cwd=ROOT,
                                     env={**os.environ, **env})
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("<exited>")
            self._changed.notify_all()

    def wait_log(self, pattern: str, *, times: int = 1, timeout_s: float = WAIT_S) -> None:
        with self._changed:
            ok = self._changed.wait_for(lambda: self.count_unlocked(pattern) >= times, timeout_s)
        assert ok, f"no {times} line(s) matching {pattern!r}:\n" + self.text()[-4000:]

    def count_unlocked(self, pattern: str) -> int:
        return sum(1 for line in self.lines if re.search(pattern, line))

    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


class TokenProxy:
    """InfluxDB's token check in front of VictoriaMetrics (which has none): `Authorization:
    Token <token>` or 401; `open = False` refuses even the right token (a store-side outage)."""

    def __init__(self, upstream: str, token: str) -> None:
        self.upstream, self.token = upstream, token
        self.open = True
        self.seen: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                auth = self.headers.get("Authorization", "")
                proxy.seen.append(auth)
                if not proxy.open or auth != f"Token {proxy.token}":
                    self._answer(401, b'{"code":"unauthorized","message":"unauthorized access"}')
                    return
                request = urllib.request.Request(proxy.upstream + self.path, data=body, method="POST",
                                                 headers={"Content-Type": "text/plain"})
                try:
                    with urllib.request.urlopen(request, timeout=10) as resp:
                        self._answer(resp.status, resp.read())
                except urllib.error.HTTPError as exc:
                    self._answer(exc.code, exc.read())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def auth_broker() -> Iterator[MosquittoServer]:
    """Mosquitto that wants a user name and password (and logs connects, for reconnect checks)."""
    server = MosquittoServer(listener="")
    passwd = server.workdir / "passwd"
    for i, (user, password) in enumerate([("gateway", GW_PASSWORD), ("yz-a", AGENT_PASSWORD)]):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd), user, password],
                       check=True, capture_output=True, timeout=30)
    server.extra_config = f"allow_anonymous false\npassword_file {passwd}\n"
    with server:
        yield server


def retained(port: int, filters: list[str], client_id: str, expect: Callable[[list[str]], bool]) -> list[bytes]:
    """The retained payloads on `filters`, read by a fresh subscriber once `expect(topics)` holds."""
    reader = Collector(port, filters, client_id, tls={"username": "gateway", "password": GW_PASSWORD})
    try:
        assert reader.wait_for(lambda msgs: expect([m[0] for m in msgs])), reader.messages
        return [m[1] for m in reader.messages]
    finally:
        reader.close()


@pytest.mark.integration
def test_the_gateway_never_shows_its_password_or_token(
    tmp_path: Path, auth_broker: MosquittoServer, store: VictoriaMetricsServer
) -> None:
    proxy = TokenProxy(store.url, TOKEN)
    (tmp_path / "mqtt.password").write_text(GW_PASSWORD + "\n")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[mqtt]\nurl = "{auth_broker.url}"\nusername = "gateway"\npassword_file = "{tmp_path / "mqtt.password"}"\n'
        f'reconnect_max_s = 1\n\n[influx]\nurl = "{proxy.url}"\nretry_initial_s = 0.1\nretry_max_s = 0.5\n\n'
        '[gateway]\nid = "gw-secret"\nshare_group = ""\nregistry_interval_s = 0.5\nstats_interval_s = 1\n'
        f'state_dir = "{tmp_path / "state"}"\n'
    )
    logs: list[str] = []
    check = subprocess.run(lifeline("gateway", "--check", "--config", str(config)), capture_output=True,
                           text=True, timeout=60, cwd=ROOT, env={**os.environ, "LIFELINE_INFLUX_TOKEN": TOKEN})
    assert check.returncode == 0, check.stderr
    logs.append(check.stdout + check.stderr)
    agent = Publisher(auth_broker.port, "t-secret-yz-a", username="yz-a", password=AGENT_PASSWORD)
    try:
        # A refused login: the wrong password from the environment beats nothing, the file is unset.
        wrong = tmp_path / "wrong.toml"
        wrong.write_text(config.read_text().replace(f'password_file = "{tmp_path / "mqtt.password"}"', ""))
        refused = LoggedProcess(lifeline("gateway", "--config", str(wrong)),
                                {"LIFELINE_MQTT_PASSWORD": WRONG_PASSWORD, "LIFELINE_INFLUX_TOKEN": TOKEN})
        refused.wait_log(r"refused the connection")
        refused.stop()
        logs.append(refused.text())

        proxy.open = False  # the store refuses the (right) token at first
        gateway = LoggedProcess(lifeline("gateway", "--config", str(config)), {"LIFELINE_INFLUX_TOKEN": TOKEN})
        try:
            gateway.wait_log(r"connected to .* as lifeline-gw-gw-secret")
            start = recent_ms()
            agent.publish(status_topic(P, "yz-a"), Status("yz-a", "online", start, {"version": "t"}).encode(),
                          retain=True)
            agent.wait_all()
            gateway.wait_log(r"statuses 1,")  # so the gateway is subscribed: the alert reaches it
            a = Alert(id="yz-a:1", agent="yz-a", sensor="GAS-1", kind="pipe.gas", site="s1", township="t1",
                      district="yuzhong", rule="high", level=2, prev=0, value=30.0, ts=start, seq=1, limit=20.0)
            agent.publish(alert_topic(P, a.district, a.site, a.sensor), a.encode())
            agent.wait_all()
            gateway.wait_log(r"store unavailable \(HTTP 401")  # the write refused, retried
            proxy.open = True
            eventually(lambda: bool(store.export('{__name__="alert_level",sensor="GAS-1"}', start_ms=0)),
                       what="the alert stored through the token check")
            auth_broker.restart()  # a lost connection and a reconnect
            gateway.wait_log(r"connected to .* as lifeline-gw-gw-secret", times=2)
            payloads = retained(auth_broker.port, [f"{P}/status/+", f"{P}/registry/+"], "t-secret-reader",
                                lambda topics: f"{P}/registry/gw-secret" in topics)
        finally:
            assert gateway.stop() == 0
        logs.append(gateway.text())
        payloads += retained(auth_broker.port, [f"{P}/registry/+"], "t-secret-reader-2", bool)
    finally:  # the broker is this test's own: its retained messages go with it
        agent.close()
        proxy.close()
    assert f"Token {TOKEN}" in proxy.seen  # the token from the environment reached the store
    assert "401" in logs[-1] and "refused the connection" in logs[1]  # the failures were logged
    for i, text in enumerate(logs):
        assert_no_secret(text, f"gateway log {i}")
    for payload in payloads:
        assert_no_secret(payload, "a retained status or registry payload")


@pytest.mark.integration
def test_the_agent_never_shows_its_password(
    tmp_path: Path, auth_broker: MosquittoServer, broker: MosquittoServer
) -> None:
    """Password from the environment at first (wrong), then a password file rotated to the right
    one without a restart; a broker restart; raw blocks from an anonymous local broker."""
    ensure_precompiled()
    secret = tmp_path / "mqtt.password"
    secret.write_text(WRONG_PASSWORD + "\n")
    sensors = [{"id": "GAS-A1", "site": "s1", "kind": "pipe.gas", "high": [20.0, 50.0],
                "debounce": 1, "gap_s": 600.0}]
    config = write_config(tmp_path / "agent.toml", agent="yz-a", broker_url=auth_broker.url,
                          state_dir=tmp_path / "state", agent_extra="window_s = 1",
                          mqtt_extra=f'username = "yz-a"\npassword_file = "{secret}"\nreconnect_max_s = 1',
                          extra=f'[raw_mqtt]\nurl = "{broker.url}"', sensors=sensors)
    check = subprocess.run(lifeline("agent", "--check", "--config", str(config)), capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
    assert check.returncode == 0, check.stderr
    logs = [check.stdout + check.stderr]
    raw = RawPublisher(broker.port, client_id="t-secret-raw")
    agent = LoggedProcess(lifeline("agent", "--config", str(config)), {"LIFELINE_MQTT_PASSWORD": WRONG_PASSWORD})
    try:
        agent.wait_log(r"cannot connect to .*refused")
        secret.write_text(AGENT_PASSWORD + "\n")  # rotated: taken at the next attempt
        agent.wait_log(r"connected to .* as yz-a")
        agent.wait_log(r"raw input connected")
        raw.block("GAS-A1", [60.0], t0=int(time.time() * 1000))
        agent.wait_log(r"alert seq=\d+ GAS-A1")
        auth_broker.restart()
        agent.wait_log(r"connected to .* as yz-a", times=2)
        payloads = retained(auth_broker.port, [f"{P}/status/yz-a"], "t-secret-agent-status", bool)
    finally:
        code = agent.stop()
        raw.close()
    logs.append(agent.text())
    assert code == 0, agent.text()[-3000:]
    payloads += retained(auth_broker.port, [f"{P}/status/yz-a"], "t-secret-agent-status-2", bool)
    for text in logs:
        assert_no_secret(text, "agent log")
    for payload in payloads:
        assert_no_secret(payload, "the agent's retained status")
