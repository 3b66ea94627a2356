"""Harness for azs-sim, the Azure simulator: start one with a scenario and a fault plan in a few
lines, talk to it over HTTPS with the test CA, and ask it what it received.

    from azsim import Sim, scenario

    with Sim(scenario(recordsPerHour=50), now="2026-11-03T00:00:00Z") as sim:
        sim.set_faults([{"endpoint": "commerce", "status": 503, "retryAfter": "2", "times": 1}])
        ...                              # point the daemon at sim.url, CA file sim.ca_file
        assert sim.summary()["comparison"]["ok"]

The binary is $AZS_SIM, else $AZS_BUILD_DIR/tests/sim/azs-sim. The test PKI (a CA, a server
certificate for localhost/127.0.0.1/::1, and a client certificate for JWT assertions) is made
once per process with the openssl command in a temporary directory, never committed.
Only the Python standard library is used.
"""

import atexit
import base64
import hashlib
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid

try:
    from waiting import limit  # tests/ is on PYTHONPATH in the test suites
except ImportError:  # scripts/demo.py, the benchmarks
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from waiting import limit

# Client ids and secrets of the default scenario (test values, not secrets of anything real).
STACK_CLIENT_ID = "5a1d0c1e-0000-4000-8000-00000000aa01"
STACK_CLIENT_SECRET = "stack-client-secret-for-tests"
AZURE_CLIENT_ID = "5a1d0c1e-0000-4000-8000-00000000aa02"
AZURE_CLIENT_SECRET = "azure-client-secret-for-tests"
CERT_CLIENT_ID = "5a1d0c1e-0000-4000-8000-00000000aa03"
AAD_TENANT = "contoso.onmicrosoft.com"

_pki_dir = None


def _openssl(*args, cwd=None, data=None):
    """Run the openssl command; raise with its stderr on failure."""
    p = subprocess.run(["openssl", *args], cwd=cwd, input=data, capture_output=True)
    if p.returncode != 0:
        raise RuntimeError("openssl %s: %s" % (" ".join(args), p.stderr.decode(errors="replace")))
    return p.stdout


def pki(directory=None, days=2):
    """Make the test CA, server and client certificates; return their directory.

    Files: ca.pem, server.pem, server.key, client.pem (certificate), client.key,
    client-bundle.pem (certificate + key, as the daemon's client_certificate_file wants).
    Without directory they are made once per process in a temporary directory removed at exit;
    with directory (created if missing) they are made there, valid for days, and kept (the demo
    uses this so its CA outlives it with --keep-running).
    """
    global _pki_dir
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
        _make_pki(directory, days)
        return directory
    if _pki_dir:
        return _pki_dir
    d = tempfile.mkdtemp(prefix="azsim-pki-")
    atexit.register(shutil.rmtree, d, True)
    _make_pki(d, days)
    _pki_dir = d
    return d


def _make_pki(d, days):
    """Write the CA, server and client certificates and keys into directory d."""
    days = str(days)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", days, "-subj", "/CN=azs-sim test CA", cwd=d)
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n"
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", days, "-extfile", "server.ext",
             cwd=d)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out",
             "client.pem", "-days", days, "-subj", "/CN=azs-usaged test client", cwd=d)
    with open(os.path.join(d, "client-bundle.pem"), "w") as f:
        for name in ("client.pem", "client.key"):
            with open(os.path.join(d, name)) as g:
                f.write(g.read())
    for name in ("ca.key", "server.key", "client.key", "client-bundle.pem"):
        os.chmod(os.path.join(d, name), 0o600)


def b64url(data):
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def x5t(cert_file):
    """The x5t of a certificate: base64url SHA-1 of its DER."""
    der = _openssl("x509", "-in", cert_file, "-outform", "DER")
    return b64url(hashlib.sha1(der).digest())


def make_assertion(client_id, aud, key_file=None, cert_file=None, exp_in=600, nbf_in=0,
                   thumbprint=None, alg="RS256", claims=None):
    """Build an RS256 client assertion JWT (signed with `openssl dgst -sha256 -sign`).
    claims replaces or adds claims; a claim set to None is left out."""
    d = pki()
    key_file = key_file or os.path.join(d, "client.key")
    cert_file = cert_file or os.path.join(d, "client.pem")
    now = int(time.time())
    header = {"alg": alg, "typ": "JWT", "x5t": thumbprint or x5t(cert_file)}
    body = {"aud": aud, "iss": client_id, "sub": client_id, "jti": str(uuid.uuid4()),
            "nbf": now + nbf_in, "exp": now + exp_in}
    body.update(claims or {})
    claims = {k: v for k, v in body.items() if v is not None}
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                     b64url(json.dumps(claims, separators=(",", ":")).encode()))
    sig = _openssl("dgst", "-sha256", "-sign", key_file, data=signing_input.encode())
    return signing_input + "." + b64url(sig)


def scenario(**overrides):
    """A scenario dict with sensible defaults: 3 tenants (2 registered), 2 user subscriptions
    each, 3 resources per subscription, 48 hours from 2026-11-01T00:00Z, 20 records an hour,
    10 % late records, and three clients (stack secret, Azure secret, Azure certificate).
    Keyword arguments replace top-level members."""
    d = pki()
    sc = {
        "seed": 42,
        "identity": "aad",
        "aadTenant": AAD_TENANT,
        "tenants": 3,
        "registeredTenants": 2,
        "subscriptionsPerTenant": 2,
        "resourcesPerSubscription": 3,
        "hours": {"from": "2026-11-01T00:00:00Z", "count": 48},
        "recordsPerHour": 20,
        "latePercent": 10,
        "pageSize": 1000,
        "tokenLifetime": 3600,
        "clients": [
            {"clientId": STACK_CLIENT_ID, "secret": STACK_CLIENT_SECRET},
            {"clientId": AZURE_CLIENT_ID, "secret": AZURE_CLIENT_SECRET},
            {"clientId": CERT_CLIENT_ID, "certificate": os.path.join(d, "client.pem")},
        ],
        "commerce": {"path": "/api/usageEvents/batch", "maxEvents": 1000,
                     "maxBytes": 4 * 1024 * 1024},
    }
    sc.update(overrides)
    return sc


def sim_binary():
    """Path of the azs-sim binary."""
    if os.environ.get("AZS_SIM"):
        return os.environ["AZS_SIM"]
    build = os.environ.get("AZS_BUILD_DIR")
    if not build:
        raise RuntimeError("set AZS_BUILD_DIR (meson build directory) or AZS_SIM")
    return os.path.join(build, "tests", "sim", "azs-sim")


class Response:
    """An HTTP answer: status, headers (lower-case names), body bytes."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %d %r>" % (self.status, self.body[:200])


class Sim:
    """One running azs-sim. Use as a context manager or call stop()."""

    def __init__(self, scenario_dict=None, now=None, faults=None, workdir=None, timeout=10.0,
                 extra_args=()):
        d = pki()
        self.ca_file = os.path.join(d, "ca.pem")
        self.client_cert = os.path.join(d, "client.pem")
        self.client_key = os.path.join(d, "client.key")
        self.client_bundle = os.path.join(d, "client-bundle.pem")
        self._own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="azsim-")
        self.state_dir = os.path.join(self.dir, "state")
        os.makedirs(self.state_dir, exist_ok=True)
        self.scenario = scenario_dict if scenario_dict is not None else scenario()
        if faults is not None:
            self.scenario = dict(self.scenario, faults=faults)
        self.scenario_file = os.path.join(self.dir, "scenario.json")
        with open(self.scenario_file, "w") as f:
            json.dump(self.scenario, f, indent=1)
        port_file = os.path.join(self.dir, "port")
        args = [sim_binary(), "--listen", "127.0.0.1:0", "--cert", os.path.join(d, "server.pem"),
                "--key", os.path.join(d, "server.key"), "--scenario", self.scenario_file,
                "--state-dir", self.state_dir, "--port-file", port_file, *extra_args]
        if now:
            args += ["--now", now]
        self.log_file = os.path.join(self.dir, "azs-sim.log")
        self._log = open(self.log_file, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + limit(timeout)  # timeouts here are scaled by limit()
        while not os.path.exists(port_file):
            if self.proc.poll() is not None:
                self._log.close()
                with open(self.log_file, "rb") as f:
                    raise RuntimeError("azs-sim exited %d: %s" % (self.proc.returncode,
                                                                  f.read().decode(errors="replace")))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("azs-sim did not write its port file")
            time.sleep(0.01)
        with open(port_file) as f:
            self.port = int(f.read().strip())
        self.host = "127.0.0.1:%d" % self.port
        self.url = "https://" + self.host
        self.ssl = ssl.create_default_context(cafile=self.ca_file)
        self._world = None

    # -- plumbing ---------------------------------------------------------------------------
    def request(self, method, path, body=None, headers=None, token=None, timeout=10.0):
        """Send one request (path or full URL of this simulator); return a Response."""
        if path.startswith("https://"):
            u = urllib.parse.urlsplit(path)
            path = u.path + ("?" + u.query if u.query else "")
        h = dict(headers or {})
        if token:
            h["Authorization"] = "Bearer " + token
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ssl,
                                           timeout=limit(timeout))
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def _control(self, method, path, body=None):
        r = self.request(method, path, body=body)
        if r.status != 200:
            raise RuntimeError("%s %s: %d %s" % (method, path, r.status, r.body[:500]))
        return r.json()

    # -- control API ------------------------------------------------------------------------
    def world(self):
        """Ids of the generated world (tenants, subscriptions, registration, audiences, ...)."""
        self._world = self._control("GET", "/_sim/world")
        return self._world

    def set_faults(self, rules):
        """Replace the fault plan (a list of rules, see tests/sim/README.md)."""
        return self._control("POST", "/_sim/faults", rules)["rules"]

    def faults(self):
        """The fault plan with its seen/fired counters."""
        return self._control("GET", "/_sim/faults")["rules"]

    def set_clock(self, now=None, advance=None, real=False):
        """Set the simulated clock (RFC 3339), advance it (seconds) or return to real time."""
        if now is not None:
            body = {"now": now}
        elif advance is not None:
            body = {"advance": int(advance)}
        else:
            body = {"real": bool(real)}
        return self._control("POST", "/_sim/clock", body)["now"]

    def summary(self, since=None, until=None):
        """The ledger summary and its comparison with the expected charges."""
        q = {}
        if since:
            q["from"] = since
        if until:
            q["until"] = until
        return self._control("GET", "/_sim/ledger/summary" +
                             ("?" + urllib.parse.urlencode(q) if q else ""))

    def expected_events(self, since=None, until=None, limit=None):
        """The Commerce events a correct forwarder sends for the expected records."""
        q = {}
        if since:
            q["from"] = since
        if until:
            q["until"] = until
        if limit is not None:
            q["limit"] = str(limit)
        return self._control("GET", "/_sim/expected/events" +
                             ("?" + urllib.parse.urlencode(q) if q else ""))

    def requests(self):
        """Counts per endpoint and status, and the request list (with correlation ids)."""
        return self._control("GET", "/_sim/requests")

    def reset(self):
        """Empty the ledger and request log; registrations and faults back to the scenario."""
        return self._control("POST", "/_sim/reset")

    def arm_answers(self, put=None, delete=None, empty_list=None):
        """Choose how ARM answers customerSubscriptions PUT ("201-empty", the documented
        default, "201-body", "200-body", "200-empty"), DELETE ("204", the default, or
        "200-204") and an empty list ("value", "none": no body, "object": {}); returns the
        setting (unchanged without arguments)."""
        body = {k: v for k, v in (("put", put), ("delete", delete), ("emptyList", empty_list))
                if v is not None}
        if not body:
            return self._control("GET", "/_sim/arm")
        return self._control("POST", "/_sim/arm", body)

    # -- helpers for talking to the simulated Azure -----------------------------------------
    def token(self, resource, client_id=STACK_CLIENT_ID, secret=STACK_CLIENT_SECRET,
              tenant=AAD_TENANT):
        """Get an access token for a resource with a client secret; returns the token."""
        r = self.token_request(resource, client_id=client_id, secret=secret, tenant=tenant)
        if r.status != 200:
            raise RuntimeError("token: %d %s" % (r.status, r.body))
        return r.json()["access_token"]

    def token_request(self, resource, client_id=STACK_CLIENT_ID, secret=None, assertion=None,
                      tenant=AAD_TENANT, adfs=False):
        """POST a client-credentials token request; returns the Response."""
        form = {"grant_type": "client_credentials", "client_id": client_id, "resource": resource}
        if secret is not None:
            form["client_secret"] = secret
        if assertion is not None:
            form["client_assertion_type"] = \
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            form["client_assertion"] = assertion
        path = "/adfs/oauth2/token" if adfs else "/%s/oauth2/token" % tenant
        return self.post(path, urllib.parse.urlencode(form),
                         headers={"Content-Type": "application/x-www-form-urlencoded"})

    def token_endpoint(self, tenant=AAD_TENANT, adfs=False):
        """The token endpoint URL a JWT assertion's aud must name."""
        return self.url + ("/adfs/oauth2/token" if adfs else "/%s/oauth2/token" % tenant)

    def audiences(self):
        return (self._world or self.world())["audiences"]

    def usage_path(self, hour, subscriber=None, api_version="2015-06-01-preview"):
        """Path of the usage query for one reported hour (RFC 3339, on the hour)."""
        w = self._world or self.world()
        start = _parse_time(hour)
        q = [("reportedStartTime", _fmt_time(start)), ("reportedEndTime", _fmt_time(start + 3600)),
             ("aggregationGranularity", "Hourly"), ("api-version", api_version)]
        if subscriber:
            q.append(("subscriberId", subscriber))
        return ("/subscriptions/%s/providers/Microsoft.Commerce.Admin/subscriberUsageAggregates?%s"
                % (w["providerSubscription"], urllib.parse.urlencode(q)))

    def registration_path(self):
        return (self._world or self.world())["registration"]["id"]

    def commerce_post(self, events, token=None, gzip_body=False, headers=None, timeout=10.0):
        """POST a batch of events to the Commerce endpoint; returns the Response."""
        import gzip
        w = self._world or self.world()
        token = token or self.token(w["audiences"]["commerce"], AZURE_CLIENT_ID,
                                    AZURE_CLIENT_SECRET)
        body = json.dumps({"request": events}).encode()
        h = {"Content-Type": "application/json", "x-ms-requestid": str(uuid.uuid4()),
             "x-ms-correlationid": str(uuid.uuid4())}
        h.update(headers or {})
        if gzip_body:
            body = gzip.compress(body)
            h["Content-Encoding"] = "gzip"
        return self.post(w["commercePath"], body, headers=h, token=token, timeout=timeout)

    def daemon_config(self, directory, certificate=False, **sections):
        """The azs-usaged configuration (ARCHITECTURE.md section 3) that points every endpoint at
        this simulator: a dict {section: {key: value}}. Writes the secret files (stack-secret,
        azure-secret) into directory; certificate=True uses the client certificate bundle for
        [azure] instead of a secret. Keyword arguments update sections, e.g.
        commerce={"batch_size": "50"}. Write it with write_config()."""
        w = self._world or self.world()
        for name, value in (("stack-secret", STACK_CLIENT_SECRET),
                            ("azure-secret", AZURE_CLIENT_SECRET)):
            path = os.path.join(directory, name)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(value + "\n")
            os.chmod(path, 0o600)
        stack = {"arm_endpoint": self.url, "provider_subscription": w["providerSubscription"],
                 "identity": w["identity"]}
        if w["identity"] == "aad":
            stack["tenant"] = AAD_TENANT
        stack.update({"client_id": STACK_CLIENT_ID, "client_secret_file": "stack-secret",
                      "collect_from": w["hours"]["from"], "poll_interval": "1s",
                      "settle": "0s", "lookback": "1h"})
        azure = {"tenant": AAD_TENANT, "login_endpoint": self.url}
        if certificate:
            azure.update({"client_id": CERT_CLIENT_ID,
                          "client_certificate_file": self.client_bundle})
        else:
            azure.update({"client_id": AZURE_CLIENT_ID, "client_secret_file": "azure-secret"})
        conf = {
            "stack": stack,
            "registration": {"arm_endpoint": self.url,
                             "subscription_id": w["registration"]["subscriptionId"],
                             "resource_group": w["registration"]["resourceGroup"],
                             "name": w["registration"]["name"],
                             "audience": w["audiences"]["arm"]},
            "azure": azure,
            "commerce": {"url": self.url + w["commercePath"],
                         "audience": w["audiences"]["commerce"]},
            "store": {"path": os.path.join(directory, "usage.db")},
            "http": {"ca_file": self.ca_file},
        }
        for name, values in sections.items():
            conf.setdefault(name, {}).update(values)
        return conf

    def stop(self, check=True):
        """Stop the simulator (SIGTERM, then SIGKILL) and remove its directory. With check, an
        exit status other than 0 after SIGTERM (a crash, a sanitizer report) raises with the
        simulator's log, so sanitizer builds cannot fail silently."""
        status = self.proc.poll()
        if status is None:
            self.proc.terminate()
            try:
                status = self.proc.wait(limit(5))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                status = None
        if not self._log.closed:
            self._log.close()
        log = ""
        if check and status not in (0, None):
            with open(self.log_file, "rb") as f:
                log = f.read()[-4000:].decode(errors="replace")
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        if log:
            raise RuntimeError("azs-sim exited with status %d:\n%s" % (status, log))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.stop(check=exc_type is None)


def write_config(path, conf):
    """Write a {section: {key: value}} dict as an INI file."""
    with open(path, "w") as f:
        for section, values in conf.items():
            f.write("[%s]\n" % section)
            for k, v in values.items():
                f.write("%s = %s\n" % (k, v))
            f.write("\n")
    return path


def _parse_time(s):
    import calendar
    return calendar.timegm(time.strptime(s.replace("+00:00", "Z"), "%Y-%m-%dT%H:%M:%SZ"))


def _fmt_time(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def canonical_instance_data(text):
    """The canonical instanceData of the record key (ARCHITECTURE.md section 4): the JSON text
    parsed and written again with members sorted, no white space, non-ASCII as UTF-8 (what
    jansson's json_dumps(JSON_COMPACT | JSON_SORT_KEYS) writes for strings, objects and null)."""
    return json.dumps(json.loads(text), separators=(",", ":"), sort_keys=True,
                      ensure_ascii=False)


def record_key(reported_hour, record):
    """The record key of ARCHITECTURE.md section 4 for a usage-API record (a parsed dict): the
    reported hour, subscription, meter, usage window and the canonical instanceData."""
    p = record["properties"]

    def z(t):
        return _fmt_time(_parse_time(t))
    fields = [z(reported_hour), p["subscriptionId"].lower(), p["meterId"].lower().replace("-", ""),
              z(p["usageStartTime"]), z(p["usageEndTime"]),
              canonical_instance_data(p["instanceData"])]
    return hashlib.sha256("\n".join(fields).encode()).hexdigest()


def shape(v):
    """The structure of a JSON value: keys and nesting, numbers vs strings, not values."""
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [shape(v[0])] if v else []
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if v is None:
        return "null"
    return "string"
