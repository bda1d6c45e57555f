"""maillink.toml and credentials.json: defaults, overrides, and one-line errors naming the key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from maillink.config import (
    Credentials,
    Settings,
    check_endpoint,
    linking_policy,
    load_credentials,
    load_settings,
)
from maillink.errors import ConfigError
from maillink.linking.facts import LinkingPolicy, MultipleOpenItems

REPO = Path(__file__).resolve().parents[1]
MINIMAL = '[crm]\nbase_url = "https://acme.pipedrive.com"\n'
SECRET = "s3cr3t-VALUE-never-shown"


def write(folder: Path, text: str, name: str = "maillink.toml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load(folder: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings(write(folder, text), env=env or {})


def one_line(error: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def config_error(folder: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as error:
        load(folder, text, env)
    return one_line(error)


# --- maillink.toml: where it is read from ----------------------------------------------------


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path, MINIMAL)

    assert settings.config_path == tmp_path / "maillink.toml"
    assert settings.store_url == f"sqlite:///{tmp_path.as_posix()}/maillink.db"
    assert settings.crm.kind == "pipedrive"
    assert settings.crm.base_url == "https://acme.pipedrive.com"
    assert settings.gmail.api_endpoint == "https://gmail.googleapis.com"
    assert settings.microsoft.authority == "https://login.microsoftonline.com/common"
    assert settings.microsoft.graph_url == "https://graph.microsoft.com/v1.0"
    assert settings.microsoft.folders == ("inbox", "sentitems")
    assert settings.linking.internal_domains == ()
    assert settings.linking.blocked == ()
    assert settings.linking.multiple_open_items is MultipleOpenItems.ASK
    assert settings.linking.create_persons is False
    assert settings.sync.interval_seconds == 120
    assert settings.sync.page_size == 500
    assert settings.cache.person_ttl_seconds == 3600
    assert settings.cache.items_ttl_seconds == 600
    assert settings.credentials_path == tmp_path / "credentials.json"


def test_example_config_is_valid_and_means_what_it_says(tmp_path: Path) -> None:
    path = tmp_path / "maillink.toml"
    shutil.copy(REPO / "maillink.example.toml", path)

    settings = load_settings(path, env={})

    assert settings.crm.base_url == "https://yourcompany.pipedrive.com"
    assert settings.store_url == f"sqlite:///{tmp_path.as_posix()}/maillink.db"
    assert settings.linking.internal_domains == ("yourcompany.com",)
    assert settings.linking.blocked == ("noreply@*", "*@notifications.example.com")
    assert settings.sync.interval_seconds == 120


def test_every_key_is_read(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        credentials = "secrets/creds.json"
        [store]
        url = "postgresql://maillink@db.internal/maillink"
        [crm]
        kind = "Pipedrive"
        base_url = "https://acme.pipedrive.com/"
        [gmail]
        api_endpoint = "https://gmail.example.net"
        [microsoft]
        authority = "https://login.microsoftonline.us/contoso"
        graph_url = "https://graph.microsoft.us/v1.0"
        folders = ["inbox", "sentitems", "Archive"]
        [linking]
        internal_domains = ["Acme.COM", "@acme.de", "bücher.example"]
        blocked = ["NoReply@*"]
        multiple_open_items = "newest"
        create_persons = true
        [sync]
        interval_seconds = 30
        page_size = 100
        [cache]
        person_ttl_seconds = 0
        items_ttl_seconds = 60
        """,
    )

    assert settings.store_url == "postgresql://maillink@db.internal/maillink"
    assert settings.crm.base_url == "https://acme.pipedrive.com"
    assert settings.gmail.api_endpoint == "https://gmail.example.net"
    assert settings.microsoft.authority == "https://login.microsoftonline.us/contoso"
    assert settings.microsoft.graph_url == "https://graph.microsoft.us/v1.0"
    assert settings.microsoft.folders == ("inbox", "sentitems", "Archive")
    assert settings.linking.internal_domains == ("acme.com", "acme.de", "xn--bcher-kva.example")
    assert settings.linking.blocked == ("noreply@*",)
    assert settings.linking.multiple_open_items is MultipleOpenItems.NEWEST
    assert settings.linking.create_persons is True
    assert (settings.sync.interval_seconds, settings.sync.page_size) == (30, 100)
    assert (settings.cache.person_ttl_seconds, settings.cache.items_ttl_seconds) == (0, 60)
    assert settings.credentials_path == tmp_path / "secrets" / "creds.json"


def test_config_is_named_by_env_when_no_path_is_given(tmp_path: Path) -> None:
    path = write(tmp_path / "etc", MINIMAL, "team.toml")
    settings = load_settings(env={"MAILLINK_CONFIG": str(path)})
    assert settings.config_path == path


def test_explicit_path_wins_over_env(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    settings = load_settings(path, env={"MAILLINK_CONFIG": str(tmp_path / "other.toml")})
    assert settings.config_path == path


def test_config_defaults_to_maillink_toml_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, MINIMAL)
    monkeypatch.chdir(tmp_path)
    assert load_settings(env={}).config_path == tmp_path / "maillink.toml"


def test_missing_config_names_the_path_and_the_example(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(tmp_path / "nope.toml", env={})
    message = one_line(error)
    assert str(tmp_path / "nope.toml") in message
    assert "maillink.example.toml" in message


def test_missing_config_named_by_env_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(env={"MAILLINK_CONFIG": str(tmp_path / "gone.toml")})
    assert "MAILLINK_CONFIG" in one_line(error)


def test_config_path_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(tmp_path, env={})
    assert "folder" in one_line(error)


def test_bad_toml_names_the_file_and_the_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[crm]\nbase_url = "https://acme.pipedrive.com"\nkind = \n')
    assert "maillink.toml" in message
    assert "TOML" in message
    assert "line 3" in message


# --- maillink.toml: every error names the key -------------------------------------------------


def test_missing_base_url_says_what_to_write(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[sync]\ninterval_seconds = 60\n")
    assert message == (
        f"{tmp_path / 'maillink.toml'}: [crm] base_url is missing "
        '(e.g. base_url = "https://yourcompany.pipedrive.com")'
    )


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        (
            'credentials = 3\n[crm]\nbase_url = "https://a.pipedrive.com"',
            ["credentials", "a string"],
        ),
        ('crm = "pipedrive"', ["crm", "a table"]),
        ("[store]\nurl = 1\n" + MINIMAL, ["[store] url", "a string", "not an integer"]),
        ('[crm]\nbase_url = ["https://a.pipedrive.com"]', ["[crm] base_url", "a string"]),
        ("[gmail]\napi_endpoint = true\n" + MINIMAL, ["[gmail] api_endpoint", "a string"]),
        ('[microsoft]\nfolders = "inbox"\n' + MINIMAL, ["[microsoft] folders", "a list"]),
        ('[microsoft]\nfolders = ["inbox", 3]\n' + MINIMAL, ["[microsoft] folders", "a list"]),
        ('[linking]\ninternal_domains = "a.com"\n' + MINIMAL, ["[linking] internal_domains"]),
        ('[linking]\nblocked = [""]\n' + MINIMAL, ["[linking] blocked", "non-empty strings"]),
        ('[linking]\ncreate_persons = "yes"\n' + MINIMAL, ["[linking] create_persons", "true"]),
        ('[sync]\ninterval_seconds = "120"\n' + MINIMAL, ["[sync] interval_seconds", "integer"]),
        ("[sync]\ninterval_seconds = 1.5\n" + MINIMAL, ["[sync] interval_seconds", "integer"]),
        ("[sync]\ninterval_seconds = true\n" + MINIMAL, ["[sync] interval_seconds", "integer"]),
        ("[sync]\npage_size = 2024-01-01\n" + MINIMAL, ["[sync] page_size", "date"]),
        ("[sync]\npage_size = 501\n" + MINIMAL, ["[sync] page_size", "at most 500"]),
        ("[cache]\nitems_ttl_seconds = [1]\n" + MINIMAL, ["[cache] items_ttl_seconds", "integer"]),
    ],
)
def test_wrong_type_names_the_key_and_the_expected_type(
    tmp_path: Path, toml: str, fragments: list[str]
) -> None:
    message = config_error(tmp_path, toml)
    assert message.startswith(f"{tmp_path / 'maillink.toml'}: ")
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        (
            '[strore]\nurl = "sqlite:///x.db"\n' + MINIMAL,
            ["unknown section [strore]", "did you mean [store]?"],
        ),
        ('crendentials = "c.json"\n' + MINIMAL, ["crendentials", "credentials"]),
        ("[sync]\nintervall_seconds = 5\n" + MINIMAL, ["[sync] intervall_seconds", "interval_"]),
        (MINIMAL + 'api_token = "x"\n', ["[crm] api_token: unknown key"]),
        ("[linking.rules]\nx = 1\n" + MINIMAL, ["[linking] rules", "unknown"]),
    ],
)
def test_unknown_sections_and_keys_are_refused(
    tmp_path: Path, toml: str, fragments: list[str]
) -> None:
    message = config_error(tmp_path, toml)
    for fragment in fragments:
        assert fragment in message


def test_only_pipedrive_and_hubspot_are_accepted_as_crm(tmp_path: Path) -> None:
    message = config_error(tmp_path, MINIMAL + 'kind = "salesforce"\n')
    assert "[crm] kind" in message and "pipedrive" in message and "hubspot" in message


@pytest.mark.parametrize("value", ["ask", "newest", "all", "NEWEST"])
def test_multiple_open_items_accepts_the_three_policies(tmp_path: Path, value: str) -> None:
    settings = load(tmp_path, f'[linking]\nmultiple_open_items = "{value}"\n' + MINIMAL)
    assert settings.linking.multiple_open_items is MultipleOpenItems(value.lower())


def test_bad_multiple_open_items_lists_the_choices(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[linking]\nmultiple_open_items = "oldest"\n' + MINIMAL)
    assert "[linking] multiple_open_items" in message
    assert "ask|newest|all" in message


@pytest.mark.parametrize(
    "toml",
    [
        "[sync]\ninterval_seconds = 0\n",
        "[sync]\npage_size = -1\n",
        "[cache]\nperson_ttl_seconds = -5\n",
        "[microsoft]\nfolders = []\n",
    ],
)
def test_out_of_range_values_are_refused(tmp_path: Path, toml: str) -> None:
    key = toml.split("\n")[1].split(" ")[0]
    assert key in config_error(tmp_path, toml + MINIMAL)


# --- endpoints ------------------------------------------------------------------------------

URL_KEYS = [
    ("crm", "base_url"),
    ("gmail", "api_endpoint"),
    ("microsoft", "graph_url"),
    ("microsoft", "authority"),
]


def with_url(section: str, key: str, url: str) -> str:
    if section == "crm":
        return f'[crm]\nbase_url = "{url}"\n'
    return f'[{section}]\n{key} = "{url}"\n' + MINIMAL


@pytest.mark.parametrize(("section", "key"), URL_KEYS)
def test_plain_http_to_another_host_is_refused(tmp_path: Path, section: str, key: str) -> None:
    message = config_error(tmp_path, with_url(section, key, "http://api.example.com"))
    assert f"[{section}] {key}" in message
    assert "https" in message


@pytest.mark.parametrize(("section", "key"), [k for k in URL_KEYS if k[1] != "authority"])
@pytest.mark.parametrize("host", ["127.0.0.1:8080", "[::1]:9000", "localhost:5000", "LOCALHOST"])
def test_plain_http_to_loopback_is_accepted(
    tmp_path: Path, section: str, key: str, host: str
) -> None:
    settings = load(tmp_path, with_url(section, key, f"http://{host}/base"))
    value = getattr(getattr(settings, section), key)
    assert value == f"http://{host}/base"


def test_authority_is_https_even_on_loopback(tmp_path: Path) -> None:
    message = config_error(tmp_path, with_url("microsoft", "authority", "http://127.0.0.1:8443/t"))
    assert "[microsoft] authority" in message and "https" in message

    https = load(tmp_path, with_url("microsoft", "authority", "https://127.0.0.1:8443/t"))
    assert https.microsoft.authority == "https://127.0.0.1:8443/t"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("acme.pipedrive.com", "no scheme"),
        ("ftp://acme.pipedrive.com", "'ftp'"),
        ("https://", "host"),
        ("https://user:pw@acme.pipedrive.com", "user name or password"),
        ("https://acme.pipedrive.com:99999", "port"),
        ("http://[::1", "not a valid URL"),
        ("http://10.0.0.5:8080", "loopback"),
        ("http://localhost.evil.com", "loopback"),
        ("", "URL"),
    ],
)
def test_check_endpoint_refuses_unusable_urls(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_endpoint(url, "creds.json: x.token_uri")
    message = one_line(error)
    assert message.startswith("creds.json: x.token_uri ")
    assert fragment in message
    assert "pw@" not in message


def test_check_endpoint_returns_accepted_urls() -> None:
    assert check_endpoint(" https://a.example/x ", "k") == "https://a.example/x"
    assert check_endpoint("HTTP://127.0.0.2:1/x", "k") == "HTTP://127.0.0.2:1/x"
    with pytest.raises(ConfigError):
        check_endpoint("http://localhost/x", "k", https_only=True)


# --- the store and credentials paths --------------------------------------------------------


def test_relative_sqlite_path_is_beside_the_config_not_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path / "conf", '[store]\nurl = "sqlite:///data/ml.db?timeout=5"\n' + MINIMAL)
    settings = load_settings(config, env={})
    assert (
        settings.store_url
        == f"sqlite:///{(tmp_path / 'conf' / 'data' / 'ml.db').as_posix()}?timeout=5"
    )


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////var/lib/maillink/ml.db",
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite+pysqlite:////abs/ml.db",
        "postgresql+psycopg://ml:pw@db/ml",
    ],
)
def test_absolute_memory_and_server_urls_are_kept(tmp_path: Path, url: str) -> None:
    assert load(tmp_path, f'[store]\nurl = "{url}"\n' + MINIMAL).store_url == url


def test_store_url_env_overrides_the_file(tmp_path: Path) -> None:
    env = {"MAILLINK_STORE_URL": "postgresql://ml@db.internal/ml"}
    settings = load(tmp_path, '[store]\nurl = "sqlite:///x.db"\n' + MINIMAL, env)
    assert settings.store_url == "postgresql://ml@db.internal/ml"


def test_relative_sqlite_path_in_env_is_from_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path / "conf", MINIMAL)
    settings = load_settings(config, env={"MAILLINK_STORE_URL": "sqlite:///here.db"})
    assert settings.store_url == f"sqlite:///{(tmp_path / 'here.db').as_posix()}"


def test_store_url_with_unknown_scheme_is_refused_without_echoing_it(tmp_path: Path) -> None:
    message = config_error(tmp_path, f'[store]\nurl = "mysql://u:{SECRET}@h/db"\n' + MINIMAL)
    assert "[store] url" in message and "postgresql://" in message
    assert SECRET not in message
    message = config_error(tmp_path, MINIMAL, {"MAILLINK_STORE_URL": f"{SECRET}.db"})
    assert "MAILLINK_STORE_URL" in message and SECRET not in message


def test_store_password_is_not_in_the_settings_repr(tmp_path: Path) -> None:
    settings = load(tmp_path, f'[store]\nurl = "postgresql://ml:{SECRET}@db/ml"\n' + MINIMAL)
    assert SECRET not in repr(settings)


def test_absolute_credentials_path_is_kept(tmp_path: Path) -> None:
    elsewhere = tmp_path / "vault" / "c.json"
    settings = load(tmp_path, f'credentials = "{elsewhere.as_posix()}"\n' + MINIMAL)
    assert settings.credentials_path == elsewhere


# --- linking policy ------------------------------------------------------------------------


def test_linking_policy_joins_config_and_connected_mailboxes(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        '[linking]\ninternal_domains = ["Acme.com"]\nblocked = ["noreply@*"]\n'
        'multiple_open_items = "all"\n' + MINIMAL,
    )

    policy = linking_policy(settings, [" Ann@Acme.com", "bob@acme.com", ""])

    assert policy == LinkingPolicy(
        own_addresses=frozenset({"ann@acme.com", "bob@acme.com"}),
        internal_domains=frozenset({"acme.com"}),
        blocked=("noreply@*",),
        multiple_open_items=MultipleOpenItems.ALL,
    )


# --- credentials.json -----------------------------------------------------------------------

INSTALLED: dict[str, Any] = {
    "client_id": "123.apps.googleusercontent.com",
    "client_secret": SECRET,
    "auth_uri": "https://accounts.google.com/o/oauth2/auth",
    "token_uri": "https://oauth2.googleapis.com/token",
    "redirect_uris": ["http://localhost"],
    "project_id": "p",
}


def write_credentials(folder: Path, data: Any) -> Path:
    text = data if isinstance(data, str) else json.dumps(data)
    return write(folder, text, "credentials.json")


def credentials_error(folder: Path, data: Any, env: dict[str, str] | None = None) -> str:
    path = write_credentials(folder, data)
    with pytest.raises(ConfigError) as error:
        load_credentials(path, env=env or {})
    message = one_line(error)
    assert SECRET not in message
    return message


def test_example_credentials_are_valid(tmp_path: Path) -> None:
    credentials = load_credentials(REPO / "credentials.example.json", env={})

    client = credentials.google_client()
    assert client["client_id"] == "YOUR_CLIENT_ID.apps.googleusercontent.com"
    assert client["token_uri"] == "https://oauth2.googleapis.com/token"
    assert credentials.microsoft is not None and credentials.microsoft.client_id
    assert credentials.pipedrive is not None and not credentials.pipedrive.uses_oauth
    assert len(credentials.encryption_keys) == 1


def test_settings_read_credentials_beside_the_config(tmp_path: Path) -> None:
    write_credentials(tmp_path, {"google": {"installed": INSTALLED}})
    settings = load(tmp_path, MINIMAL, {"MAILLINK_ENCRYPTION_KEY": "k1"})

    credentials = settings.credentials()

    assert isinstance(credentials, Credentials)
    assert credentials.google == {"installed": INSTALLED}
    assert credentials.google_client() == INSTALLED
    assert credentials.microsoft is None and credentials.pipedrive is None
    assert credentials.encryption_keys == ("k1",)


def test_web_client_is_accepted(tmp_path: Path) -> None:
    path = write_credentials(tmp_path, {"google": {"web": INSTALLED}})
    assert load_credentials(path, env={}).google_client() == INSTALLED


def test_missing_credentials_names_the_path_and_the_example(tmp_path: Path) -> None:
    settings = load(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as error:
        settings.credentials()
    message = one_line(error)
    assert str(tmp_path / "credentials.json") in message
    assert "credentials.example.json" in message


def test_malformed_credentials_json_gives_line_and_column(tmp_path: Path) -> None:
    message = credentials_error(tmp_path, '{\n  "pipedrive": {"api_token": "x"},\n}\n')
    assert "credentials.json" in message and "JSON" in message
    assert "line 3, column 1" in message


def test_credentials_must_be_an_object(tmp_path: Path) -> None:
    assert "JSON object" in credentials_error(tmp_path, [SECRET])


@pytest.mark.parametrize("missing", ["client_id", "auth_uri", "token_uri"])
def test_missing_google_fields_are_named(tmp_path: Path, missing: str) -> None:
    client = {k: v for k, v in INSTALLED.items() if k != missing}
    message = credentials_error(tmp_path, {"google": {"installed": client}})
    assert f"google.installed.{missing} is missing" in message


def test_google_client_secret_is_optional(tmp_path: Path) -> None:
    client = {k: v for k, v in INSTALLED.items() if k != "client_secret"}
    path = write_credentials(tmp_path, {"google": {"installed": client}})
    assert "client_secret" not in load_credentials(path, env={}).google_client()


@pytest.mark.parametrize(
    "google", [{}, {"installed": INSTALLED, "web": INSTALLED}, {"desktop": INSTALLED}]
)
def test_google_needs_exactly_one_of_installed_or_web(tmp_path: Path, google: Any) -> None:
    message = credentials_error(tmp_path, {"google": google})
    assert "google" in message and "installed or web" in message


def test_google_token_uri_follows_the_endpoint_rule(tmp_path: Path) -> None:
    remote = dict(INSTALLED, token_uri="http://oauth2.example.com/token")
    message = credentials_error(tmp_path, {"google": {"installed": remote}})
    assert "google.installed.token_uri" in message and "https" in message

    local = dict(INSTALLED, auth_uri="http://127.0.0.1:8001/auth", token_uri="http://[::1]:80/t")
    path = write_credentials(tmp_path, {"google": {"installed": local}})
    assert load_credentials(path, env={}).google_client()["token_uri"] == "http://[::1]:80/t"


def test_google_client_without_google_is_a_config_error(tmp_path: Path) -> None:
    path = write_credentials(tmp_path, {"pipedrive": {"api_token": SECRET}})
    with pytest.raises(ConfigError) as error:
        load_credentials(path, env={}).google_client()
    assert "google is missing" in one_line(error)


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        ({"gogle": {}}, ["gogle", "unknown", "google"]),
        ({"google": [SECRET]}, ["google", "an object", "not a list"]),
        ({"google": {"installed": dict(INSTALLED, client_id=7)}}, ["installed.client_id"]),
        ({"microsoft": {"client_secret": SECRET}}, ["microsoft.client_id is missing"]),
        ({"microsoft": {"client_id": "c", "secret": SECRET}}, ["microsoft.secret", "unknown"]),
        ({"microsoft": {"client_id": "c", "tenant": 5}}, ["microsoft.tenant", "a string"]),
        ({"pipedrive": {}}, ["pipedrive.api_token is missing"]),
        ({"pipedrive": {"api_token": [SECRET]}}, ["pipedrive.api_token", "a string"]),
        ({"pipedrive": {"client_id": "c", "client_secret": SECRET}}, ["refresh_token is missing"]),
        ({"pipedrive": {"api_token": SECRET, "client_id": "c"}}, ["pipedrive.api_token", "both"]),
        (
            {"pipedrive": {"api_token": SECRET, "token_url": "http://oauth.example.com"}},
            ["pipedrive.token_url", "https"],
        ),
        ({"encryption_key": 12}, ["encryption_key", "a string or a list"]),
        ({"encryption_key": [SECRET, 1]}, ["encryption_key"]),
    ],
)
def test_wrong_credentials_shapes_name_the_key(
    tmp_path: Path, data: dict[str, Any], fragments: list[str]
) -> None:
    message = credentials_error(tmp_path, data)
    assert message.startswith(f"{tmp_path / 'credentials.json'}: ")
    for fragment in fragments:
        assert fragment in message


def test_pipedrive_oauth_fields_are_read(tmp_path: Path) -> None:
    fields = {"client_id": "cid", "client_secret": SECRET, "refresh_token": SECRET + "r"}
    path = write_credentials(
        tmp_path, {"pipedrive": dict(fields, token_url="http://localhost:9/oauth/token")}
    )
    pipedrive = load_credentials(path, env={}).pipedrive
    assert pipedrive is not None and pipedrive.uses_oauth
    assert (pipedrive.client_id, pipedrive.client_secret) == ("cid", SECRET)
    assert pipedrive.refresh_token == SECRET + "r"
    assert pipedrive.token_url == "http://localhost:9/oauth/token"


def test_comment_keys_are_ignored(tmp_path: Path) -> None:
    path = write_credentials(
        tmp_path, {"_comment": "x", "pipedrive": {"_note": "y", "api_token": "t"}}
    )
    assert load_credentials(path, env={}).pipedrive is not None


@pytest.mark.parametrize(
    ("value", "env", "keys"),
    [
        ("new", "", ("new",)),
        (["new", "old"], "", ("new", "old")),
        ("new, old", "", ("new", "old")),
        ("new", "fromenv", ("new",)),
        (None, "a,b", ("a", "b")),
        ("", "a", ("a",)),
        (None, "", ()),
    ],
)
def test_encryption_keys_come_from_the_file_else_the_environment(
    tmp_path: Path, value: Any, env: str, keys: tuple[str, ...]
) -> None:
    data = {} if value is None else {"encryption_key": value}
    path = write_credentials(tmp_path, data)
    assert load_credentials(path, env={"MAILLINK_ENCRYPTION_KEY": env}).encryption_keys == keys


def test_no_secret_value_in_the_credentials_repr(tmp_path: Path) -> None:
    path = write_credentials(
        tmp_path,
        {
            "google": {"installed": INSTALLED},
            "microsoft": {"client_id": "m", "client_secret": SECRET, "tenant": "t"},
            "pipedrive": {"api_token": SECRET},
            "encryption_key": SECRET,
        },
    )
    credentials = load_credentials(path, env={})
    assert SECRET not in repr(credentials)
    assert SECRET not in repr(credentials.microsoft)
    assert SECRET not in repr(credentials.pipedrive)
    oauth = write_credentials(
        tmp_path,
        {"pipedrive": {"client_id": "c", "client_secret": SECRET, "refresh_token": SECRET}},
    )
    assert SECRET not in repr(load_credentials(oauth, env={}))


# --- the daemon: scheduling, leases, its ops endpoint (issue 5) -------------------------------


def test_daemon_keys_have_documented_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path, MINIMAL)

    assert settings.sync.jitter_seconds == 10
    assert settings.sync.max_backoff_seconds == 3600
    assert settings.sync.lease_seconds == 60
    assert settings.sync.workers == 0  # 1 on SQLite, 4 on PostgreSQL
    assert settings.daemon.ops_enabled is True
    assert (settings.daemon.ops_host, settings.daemon.ops_port) == ("127.0.0.1", 8780)
    assert settings.daemon.crm_poll_seconds == 300


def test_daemon_keys_are_read(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        MINIMAL
        + """
        [sync]
        jitter_seconds = 0
        max_backoff_seconds = 900
        lease_seconds = 20
        workers = 3
        [daemon]
        ops_enabled = false
        ops_host = "0.0.0.0"
        ops_port = 0
        crm_poll_seconds = 60
        """,
    )

    sync = settings.sync
    assert (sync.jitter_seconds, sync.max_backoff_seconds, sync.lease_seconds) == (0, 900, 20)
    assert sync.workers == 3
    assert settings.daemon.ops_enabled is False
    assert (settings.daemon.ops_host, settings.daemon.ops_port) == ("0.0.0.0", 0)
    assert settings.daemon.crm_poll_seconds == 60


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ("[sync]\nlease_seconds = 1\n", ["[sync] lease_seconds", "at least 2"]),
        ("[sync]\njitter_seconds = -1\n", ["[sync] jitter_seconds", "at least 0"]),
        ('[sync]\nworkers = "4"\n', ["[sync] workers", "an integer"]),
        ("[daemon]\nops_port = 70000\n", ["[daemon] ops_port", "65535"]),
        ('[daemon]\nops_host = ""\n', ["[daemon] ops_host", "empty"]),
        ('[daemon]\nops_enabled = "yes"\n', ["[daemon] ops_enabled", "true or false"]),
        ("[daemon]\nops_prot = 1\n", ["[daemon] ops_prot", "unknown", "ops_port"]),
        ("[deamon]\nops_port = 1\n", ["unknown section [deamon]", "did you mean [daemon]?"]),
    ],
)
def test_bad_daemon_keys_are_refused_naming_the_key(
    tmp_path: Path, toml: str, fragments: list[str]
) -> None:
    message = config_error(tmp_path, MINIMAL + toml)
    for fragment in fragments:
        assert fragment in message, message


def test_webhook_and_push_credentials_are_read_and_never_shown(tmp_path: Path) -> None:
    path = write_credentials(
        tmp_path,
        {
            "webhook": {"username": "pipedrive", "password": SECRET},
            "gmail_push": {"token": SECRET},
        },
    )
    credentials = load_credentials(path, env={})

    assert credentials.webhook is not None
    assert (credentials.webhook.username, credentials.webhook.password) == ("pipedrive", SECRET)
    assert credentials.gmail_push_token == SECRET
    assert SECRET not in repr(credentials)


def test_without_webhook_credentials_the_endpoints_are_off(tmp_path: Path) -> None:
    credentials = load_credentials(write_credentials(tmp_path, {}), env={})
    assert credentials.webhook is None and credentials.gmail_push_token is None


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        ({"webhook": {"username": "p"}}, ["webhook.password", "missing"]),
        ({"webhook": {"username": "p", "password": "short"}}, ["webhook.password", "16"]),
        ({"webhook": {"user": "p", "password": SECRET}}, ["webhook.username", "missing"]),
        ({"gmail_push": {"token": "short"}}, ["gmail_push.token", "16"]),
        ({"gmail_push": "x"}, ["gmail_push", "an object"]),
    ],
)
def test_bad_webhook_credentials_name_the_key(
    tmp_path: Path, data: dict[str, Any], fragments: list[str]
) -> None:
    message = credentials_error(tmp_path, data)
    for fragment in fragments:
        assert fragment in message, message


# --- pacing (issue 6) -------------------------------------------------------------------------


def test_pacing_defaults_keep_a_tenth_of_the_quotas_spare(tmp_path: Path) -> None:
    settings = load(tmp_path, MINIMAL)
    assert settings.gmail.quota_units_per_minute == 13_500  # of Google's 15,000 a user
    assert settings.gmail.quota_model == "2025"
    assert settings.microsoft.requests_per_10_minutes == 9_000  # of Graph's 10,000


def test_pacing_keys_are_read(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        MINIMAL + '[gmail]\nquota_units_per_minute = 5400\nquota_model = "2026"\n'
        "[microsoft]\nrequests_per_10_minutes = 0\n",
    )
    assert settings.gmail.quota_units_per_minute == 5400
    assert settings.gmail.quota_model == "2026"
    assert settings.microsoft.requests_per_10_minutes == 0  # pacing off


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[gmail]\nquota_model = "2024"\n', "[gmail] quota_model"),
        ("[gmail]\nquota_units_per_minute = -1\n", "[gmail] quota_units_per_minute"),
        ('[gmail]\nquota_units_per_minute = "lots"\n', "[gmail] quota_units_per_minute"),
        ("[microsoft]\nrequests_per_10_minutes = 1.5\n", "[microsoft] requests_per_10_minutes"),
    ],
)
def test_bad_pacing_keys_are_refused_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    assert named in config_error(tmp_path, MINIMAL + text)
