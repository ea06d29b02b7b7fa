"""XML Schema types through import-wsdl and the mapping, offline with real zeep: enumerations ↔
proto enums, dateTime ↔ Timestamp, decimal as text, SOAP-encoded arrays, and request values
checked against the schema before anything is sent."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from lxml import etree

from adaptercar.backends.soap import SoapBackend
from adaptercar.compile import Loaded, load_all
from adaptercar.mapping.errors import CallError, Code
from adaptercar.mapping.soap_operation import SoapOperation
from adaptercar.mapping.template import RenderContext
from tests.harness import ROOT, env_with_root

WSDL_DIR = ROOT / "tests" / "wsdl"
WEATHER = "urn:example:weather"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"


def imported(wsdl: Path, out: Path) -> Path:
    res = subprocess.run([sys.executable, "-m", "adaptercar.cli", "import-wsdl", str(wsdl),
                          "--package", "t.v1", "--out", str(out)], capture_output=True, text=True,
                         env=env_with_root(), cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    return out / "adaptercar.yaml"


def loaded(config: Path) -> Loaded:
    got = load_all(config, environ={})
    assert [p.format() for p in got.errors] == []
    return got


class Offline:
    """One imported WSDL, its operations and a backend that is never started: envelopes are
    built and replies read exactly as in a call, without the network."""

    def __init__(self, config: Path, service: str) -> None:
        self.loaded = loaded(config)
        [(spec, wsdl)] = self.loaded.soap.values()
        self.backend = SoapBackend(spec, wsdl, reactor=None)
        self.service = service

    def op(self, method: str) -> SoapOperation:
        op = self.loaded.ops[f"/{self.service}/{method}"]
        assert isinstance(op, SoapOperation)
        return op

    def request(self, method: str, **fields: Any) -> tuple[Any, bytes]:
        op = self.op(method)
        msg = op.input_class()
        for name, value in fields.items():
            if isinstance(value, dt.datetime):
                getattr(msg, name).FromDatetime(value)
            elif isinstance(value, list):
                getattr(msg, name).extend(value)
            else:
                setattr(msg, name, value)
        kwargs = op.kwargs(msg, RenderContext(msg, {}))
        return msg, self.backend.envelope(op.operation, kwargs)[0]

    def reply(self, method: str, body: str) -> Any:
        op = self.op(method)
        raw = (f'<s:Envelope xmlns:s="{SOAP11}"><s:Body>{body}</s:Body></s:Envelope>').encode()
        return op.message(self.backend._deserialize(op.operation, etree.fromstring(raw), raw))


@pytest.fixture(scope="module")
def weather(tmp_path_factory: pytest.TempPathFactory) -> Offline:
    out = tmp_path_factory.mktemp("weather")
    return Offline(imported(WSDL_DIR / "weather" / "weather.wsdl", out), "t.v1.WeatherService")


def test_enums_timestamps_and_decimals_in_the_generated_proto(weather: Offline) -> None:
    proto = next((weather.loaded.config_path and Path(weather.loaded.config_path).parent
                  / "protos").glob("*.proto")).read_text()
    assert "enum Sky {\n  SKY_UNSPECIFIED = 0;\n  SKY_CLEAR = 1;  // \"clear\"\n" in proto
    assert "  SKY_PARTLY_CLOUDY = 2;  // \"partly-cloudy\"\n  SKY_OVERCAST = 3;" in proto
    assert "UNIT_C = 1;" in proto  # values prefixed: unique in the package's scope
    assert "google.protobuf.Timestamp issued = 2;" in proto
    assert 'import "google/protobuf/timestamp.proto";' in proto
    assert "string high = 3;" in proto  # decimal: exact, as text
    assert "string date = 1;" in proto  # date: as text


def test_request_enum_timestamp_and_decimal_become_schema_values(weather: Offline) -> None:
    ts = dt.datetime(2026, 12, 5, 1, 30, tzinfo=dt.UTC)
    cls = weather.op("Report").input_class
    sky = cls.DESCRIPTOR.fields_by_name["sky"].enum_type.values_by_name["SKY_PARTLY_CLOUDY"].number
    _, xml = weather.request("Report", city="Oslo", observed=ts, sky=sky, temperature="-3.25")
    body = etree.fromstring(xml).find(f"{{{SOAP11}}}Body")[0]
    assert body.tag == f"{{{WEATHER}}}Report"  # rpc/literal: the operation's wrapper
    values = {etree.QName(c).localname: c.text for c in body}
    assert values == {"city": "Oslo", "observed": "2026-12-05T01:30:00Z",
                      "sky": "partly-cloudy", "temperature": "-3.25"}


def test_reply_enum_timestamp_and_array_become_proto_values(weather: Offline) -> None:
    got = weather.reply("GetForecast", f'''<w:GetForecastResponse xmlns:w="{WEATHER}"><forecast>
        <city>Oslo</city><issued>2026-12-05T06:00:00+01:00</issued><unit>F</unit>
        <day><date>2026-12-05</date><sky>Overcast</sky><high>33.5</high><low>-2</low></day>
        <day><date>2026-12-06</date><sky>partly-cloudy</sky><high>35</high><low>0.25</low></day>
        </forecast></w:GetForecastResponse>''')
    f = got.forecast
    assert f.city == "Oslo" and f.issued.ToDatetime() == dt.datetime(2026, 12, 5, 5, 0)
    enum = type(got).DESCRIPTOR.fields_by_name["forecast"].message_type
    unit = enum.fields_by_name["unit"].enum_type
    assert unit.values_by_number[f.unit].name == "UNIT_F"
    day = enum.fields_by_name["day"].message_type.fields_by_name["sky"].enum_type
    assert [day.values_by_number[d.sky].name for d in f.day] == ["SKY_OVERCAST", "SKY_PARTLY_CLOUDY"]
    assert [(d.date, d.high, d.low) for d in f.day] == [("2026-12-05", "33.5", "-2"),
                                                        ("2026-12-06", "35", "0.25")]


@pytest.mark.parametrize("fields,needle", [
    ({"temperature": "warm"}, "temperature: 'warm' is not a decimal number"),
    ({"temperature": "NaN"}, "temperature: 'NaN' is not a decimal number"),
    ({"sky": 0, "temperature": "1"}, "sky is required"),
    ({"sky": 99, "temperature": "1"}, "sky: 99 is not one of the values"),
])
def test_request_values_that_do_not_fit_the_schema_are_refused(weather: Offline,
                                                                 fields: dict[str, Any],
                                                                 needle: str) -> None:
    ts = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    base = {"city": "Oslo", "observed": ts, "sky": 1, **fields}
    with pytest.raises(CallError) as e:
        weather.request("Report", **base)
    assert e.value.code == Code.INVALID_ARGUMENT
    assert needle in e.value.message


def test_template_values_are_checked_against_the_element_type(tmp_path: Path) -> None:
    config = imported(WSDL_DIR / "weather" / "weather.wsdl", tmp_path / "w")
    mapping = next((tmp_path / "w" / "mappings").glob("*.yaml"))
    m = yaml.safe_load(mapping.read_text())
    m["methods"]["GetForecast"] = {"request": {"city": "{city}", "days": "{city|len}",
                                              "unit": "{city|upper}"}}
    m["methods"]["Report"] = {"request": {"city": "{city}", "observed": "{city}", "sky": "rain",
                                         "temperature": "{city}"}}
    mapping.write_text(yaml.safe_dump(m))
    w = Offline(config, "t.v1.WeatherService")
    with pytest.raises(CallError) as e:
        w.request("GetForecast", city="abc")
    assert e.value.code == Code.INVALID_ARGUMENT
    assert e.value.message == "unit (rendered from '{city|upper}'): 'ABC' is not one of C, F"
    _, xml = w.request("GetForecast", city="f")
    values = {etree.QName(c).localname: c.text for c in etree.fromstring(xml)[0][0]}
    assert values == {"city": "f", "days": "1", "unit": "F"}
    with pytest.raises(CallError) as e:
        w.request("Report", city="2026-13-45T00:00:00")
    assert e.value.message == ("city (as observed): '2026-13-45T00:00:00' is not an ISO 8601 "
                               "date and time")
    with pytest.raises(CallError) as e:
        w.request("Report", city="12")
    assert "observed" in e.value.message


def test_encoded_arrays_both_ways(tmp_path: Path) -> None:
    inv = Offline(imported(WSDL_DIR / "inventory" / "inventory.wsdl", tmp_path / "i"),
                  "t.v1.InventoryService")
    _, xml = inv.request("Tag", sku="A1", tags=["red", "big"])
    tags = etree.fromstring(xml).find(f"{{{SOAP11}}}Body")[0].find("tags")
    assert [t.text for t in tags] == ["red", "big"]
    got = inv.reply("ListItems", '''<i:ListItemsResponse xmlns:i="urn:example:inventory"
        xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
        xmlns:enc="http://schemas.xmlsoap.org/soap/encoding/">
        <items xsi:type="enc:Array" enc:arrayType="i:Item[2]">
        <item xsi:type="i:Item"><sku>A1</sku><name>Anvil</name><quantity>3</quantity></item>
        <item xsi:type="i:Item"><sku>B2</sku><name>Bell</name><quantity>5</quantity></item>
        </items></i:ListItemsResponse>''')
    assert [(i.sku, i.name, i.quantity) for i in got.items] == [("A1", "Anvil", 3), ("B2", "Bell", 5)]
