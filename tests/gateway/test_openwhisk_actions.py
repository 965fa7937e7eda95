"""OpenWhisk actions and namespaces under real gunicorn: CRUD, defaults, 409, kinds, listing."""

from __future__ import annotations

import requests

from tests.gateway.conftest import OW, Tenant


def test_namespaces_lists_the_callers_namespace(ow: OW) -> None:
    r = ow.session.get(f"{ow.base}/api/v1/namespaces")
    assert r.status_code == 200 and r.json() == ["guest"]


def test_create_fills_defaults_and_returns_the_full_action(ow: OW) -> None:
    r = ow.put_action("hello", model="org/tiny", parameters=[{"key": "max_tokens", "value": 4}],
                      limits={"timeout": 5000})
    assert r.status_code == 200, r.text
    action = r.json()
    assert action["namespace"] == "guest" and action["name"] == "hello" and action["version"] == "0.0.1"
    assert action["exec"] == {"kind": "llm", "model": "org/tiny", "code": None, "main": "main", "binary": False}
    assert action["limits"] == {"timeout": 5000, "memory": 2048, "logs": 10, "concurrency": 1}
    assert action["parameters"] == [{"key": "max_tokens", "value": 4}]
    assert {"key": "exec", "value": "llm"} in action["annotations"]
    got = ow.session.get(ow.url("actions/hello"))
    assert got.status_code == 200 and got.json() == action


def test_create_twice_is_409_and_overwrite_updates_and_bumps_the_version(ow: OW) -> None:
    assert ow.put_action("a").status_code == 200
    again = ow.put_action("a")
    assert again.status_code == 409
    assert again.json()["error"] == "resource already exists"
    assert again.headers["Content-Type"] == "application/json"
    assert len(again.json()["code"]) == 32
    updated = ow.session.put(ow.url("actions/a"), params={"overwrite": "true"},
                             json={"parameters": [{"key": "temperature", "value": 0}]})
    assert updated.status_code == 200, updated.text
    body = updated.json()
    assert body["version"] == "0.0.2" and body["exec"]["model"] == "tiny"  # exec kept from the stored action
    assert body["parameters"] == [{"key": "temperature", "value": 0}]


def test_unknown_kind_is_400_naming_the_supported_kinds(ow: OW) -> None:
    r = ow.session.put(ow.url("actions/js"), json={"exec": {"kind": "nodejs:20", "code": "x"}})
    assert r.status_code == 400
    assert "nodejs:20" in r.json()["error"] and "supported kinds: llm" in r.json()["error"]


def test_bad_bodies_are_400_naming_the_field(ow: OW) -> None:
    no_exec = ow.session.put(ow.url("actions/x"), json={})
    assert no_exec.status_code == 400 and "exec" in no_exec.json()["error"]
    bad_limit = ow.put_action("x", limits={"timeout": 10})
    assert bad_limit.status_code == 400 and "timeout" in bad_limit.json()["error"]
    bad_model = ow.put_action("x", model="../../etc")
    assert bad_model.status_code == 400 and "model" in bad_model.json()["error"]
    not_json = ow.session.put(ow.url("actions/x"), data=b"{nope", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400 and "malformed" in not_json.json()["error"]
    bad_name = ow.put_action("bad..name")
    assert bad_name.status_code == 400
    assert ow.session.get(ow.url("actions")).json() == []


def test_list_limit_skip_count(ow: OW) -> None:
    for i in range(5):
        assert ow.put_action(f"a{i}").status_code == 200
    names = [a["name"] for a in ow.session.get(ow.url("actions")).json()]
    assert sorted(names) == [f"a{i}" for i in range(5)]
    assert names[0] == "a4"  # most recently updated first
    page = ow.session.get(ow.url("actions"), params={"limit": 2, "skip": 1}).json()
    assert [a["name"] for a in page] == names[1:3]
    assert ow.session.get(ow.url("actions"), params={"count": "true"}).json() == {"actions": 5}
    too_many = ow.session.get(ow.url("actions"), params={"limit": 201})
    assert too_many.status_code == 400
    assert too_many.json()["error"] == "The value '201' is not in the range of 0 to 200 for actions."
    assert ow.session.get(ow.url("actions"), params={"skip": -1}).status_code == 400
    assert ow.session.get(ow.url("actions"), params={"skip": 2**31 - 1}).json() == []  # past the end: empty
    huge = ow.session.get(ow.url("actions"), params={"skip": 4798577261850340544753589813248})  # the fuzzer's
    assert huge.status_code == 400 and "out of range for 'skip'" in huge.json()["error"]
    huge_since = ow.session.get(ow.url("activations"), params={"since": 2**64})
    assert huge_since.status_code == 400 and "out of range for 'since'" in huge_since.json()["error"]


def test_delete_returns_the_entity_then_404(ow: OW) -> None:
    created = ow.put_action("gone").json()
    deleted = ow.session.delete(ow.url("actions/gone"))
    assert deleted.status_code == 200 and deleted.json() == created
    missing = ow.session.get(ow.url("actions/gone"))
    assert missing.status_code == 404
    assert missing.json()["error"] == "The requested resource does not exist."
    assert ow.session.delete(ow.url("actions/gone")).status_code == 404


def test_auth_failures_are_401_with_the_openwhisk_challenge(gunicorn_gateway: str, guest: Tenant) -> None:
    url = f"{gunicorn_gateway}/api/v1/namespaces/_/actions"
    for auth in (None, (guest.uuid, "wrong"), ("no-such-uuid", guest.secret)):
        r = requests.get(url, auth=auth)
        assert r.status_code == 401, auth
        assert r.headers["WWW-Authenticate"] == 'Basic realm="OpenWhisk secure realm"'
        assert r.json()["error"] == "The supplied authentication is invalid"
    for header in ("Basic !!!notbase64", "Digest abc", f"Bearer {guest.uuid}"):
        assert requests.get(url, headers={"Authorization": header}).status_code == 401
    bearer = requests.get(url, headers={"Authorization": f"Bearer {guest.api_key}"})
    assert bearer.status_code == 200


def test_cross_namespace_access_is_refused(ow: OW, other: Tenant, gunicorn_gateway: str) -> None:
    assert ow.put_action("mine").status_code == 200
    as_other = requests.Session()
    as_other.auth = other.auth
    base = f"{gunicorn_gateway}/api/v1/namespaces"
    for method, path in (("GET", "guest/actions"), ("GET", "guest/actions/mine"), ("PUT", "guest/actions/x"),
                         ("DELETE", "guest/actions/mine"), ("POST", "guest/actions/mine"),
                         ("GET", "guest/activations")):
        r = as_other.request(method, f"{base}/{path}", json={"exec": {"kind": "llm", "model": "m"}})
        assert r.status_code == 403, (method, path)
        assert "not authorized" in r.json()["error"]
    # "_" is always the caller's own namespace: other sees none of guest's actions.
    assert as_other.get(f"{base}/_/actions/mine").status_code == 404
    assert as_other.get(f"{base}/_/actions").json() == []
    assert ow.session.get(ow.url("actions/mine")).status_code == 200


def test_unknown_routes_and_methods(ow: OW) -> None:
    r = ow.session.get(f"{ow.base}/api/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"] == "The requested resource does not exist."
    assert ow.session.patch(ow.url("actions/a"), json={}).status_code == 405
