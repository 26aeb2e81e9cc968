#!/usr/bin/env python3
"""Writes Pylon's Grafana dashboards (ops/grafana/*.json) from the panel lists below.

Edit this file, then run `python3 ops/grafana/build.py`; commit both. Every query names
only metrics `pylon run` exports: `cargo test -p pylon --test ops_rules` checks each
dashboard's expressions against a live node's exposition. The dashboards read one
Prometheus data source (a `datasource` variable) and filter by `instance` and `job`;
the Helm chart provisions them through Grafana's dashboard sidecar (label
`grafana_dashboard: "1"`).
"""
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
SEL = 'instance=~"$instance"'
RATE = "$__rate_interval"


def sel(extra=""):
    return "{" + SEL + ("," + extra if extra else "") + "}"


def ts(title, targets, unit="short", desc="", stack=False, width=12):
    """A time series panel; targets are (expr, legend) pairs."""
    return {"type": "timeseries", "title": title, "description": desc, "unit": unit,
            "targets": targets, "stack": stack, "w": width, "h": 8}


def stat(title, expr, unit="short", desc="", legend="", width=4, mappings=None):
    return {"type": "stat", "title": title, "description": desc, "unit": unit,
            "targets": [(expr, legend)], "w": width, "h": 4, "mappings": mappings}


def row(title):
    return {"type": "row", "title": title, "w": 24, "h": 1}


sel_protocol = sel('scope="protocol"')
sel_reachable = sel('verdict="reachable"')
sel_inbound = sel('dir="inbound"')
sel_found = sel('result=~"found|cached"')
sel_cached = sel('result="cached"')

REACHABILITY = [{"type": "value", "options": {
    "0": {"text": "unknown", "color": "gray"},
    "1": {"text": "public", "color": "green"},
    "2": {"text": "private", "color": "orange"}}}]


OVERVIEW = [
    row("Node"),
    stat("Version", f"pylon_build_info{sel()}", legend="{{version}}",
         desc="pylon_build_info: the version each selected node runs."),
    stat("Uptime", f"time() - process_start_time_seconds{sel()}", unit="s"),
    stat("Reachability (AutoNAT)", f"libp2p_autonat_reachability_status{sel()}",
         desc="What AutoNAT servers told this node about its own addresses.",
         mappings=REACHABILITY),
    stat("Connections", f"sum(libp2p_swarm_connections{sel()})"),
    stat("Storage healthy", f"min(pylon_storage_healthy{sel()})",
         mappings=[{"type": "value", "options": {
             "0": {"text": "failing", "color": "red"},
             "1": {"text": "ok", "color": "green"}}}]),
    stat("Task failures (1h)", f"sum(increase(pylon_task_failures_total{sel()}[1h])) or vector(0)",
         desc="Supervised core tasks that ended or panicked; the node stops on one."),
    row("Connections and streams"),
    ts("Connections by direction", [(f"sum by (instance, dir) (libp2p_swarm_connections{sel()})", "{{instance}} {{dir}}")]),
    ts("Connections opened by transport", [(f"sum by (transport, security) (rate(libp2p_swarm_connections_opened_total{sel()}[{RATE}]))", "{{transport}} {{security}}")], unit="ops"),
    ts("Handshake latency", [
        (f"histogram_quantile(0.5, sum by (le) (rate(libp2p_swarm_handshake_latency_seconds_bucket{sel()}[{RATE}])))", "p50"),
        (f"histogram_quantile(0.95, sum by (le) (rate(libp2p_swarm_handshake_latency_seconds_bucket{sel()}[{RATE}])))", "p95")], unit="s"),
    ts("Dial and handshake errors", [
        (f"sum by (error) (rate(libp2p_swarm_dial_errors_total{sel()}[{RATE}]))", "dial {{error}}"),
        (f"sum by (error) (rate(libp2p_swarm_handshake_errors_total{sel()}[{RATE}]))", "handshake {{error}}")], unit="ops"),
    ts("Streams by protocol", [(f"sum by (protocol) (libp2p_rcmgr_streams{sel_protocol})", "{{protocol}}")], stack=True),
    ts("Stream payload", [(f"sum by (direction) (rate(pylon_stream_bytes_total{sel()}[{RATE}]))", "{{direction}}")], unit="Bps"),
    ts("Refused by limits", [(f"sum by (scope, resource) (rate(libp2p_rcmgr_blocked_resources{sel()}[{RATE}]))", "{{scope}} {{resource}}")], unit="ops",
       desc="Connections and streams refused by connections.max, max_per_peer, pending handshakes and stream limits."),
    ts("Ping RTT", [(f"histogram_quantile(0.5, sum by (le) (rate(libp2p_ping_rtt_seconds_bucket{sel()}[{RATE}])))", "p50")], unit="s"),
    row("Process"),
    ts("CPU", [(f"rate(process_cpu_seconds_total{sel()}[{RATE}])", "{{instance}}")], unit="percentunit", width=8),
    ts("Resident memory", [(f"process_resident_memory_bytes{sel()}", "{{instance}}")], unit="bytes", width=8),
    ts("File descriptors", [
        (f"process_open_fds{sel()}", "open {{instance}}"),
        (f"pylon_fd_limit{sel()}", "limit {{instance}}")], width=8),
    row("Storage and peers"),
    ts("Database and volume", [
        (f"pylon_storage_size_bytes{sel()}", "database {{instance}}"),
        (f"pylon_storage_volume_available_bytes{sel()}", "volume free {{instance}}")], unit="bytes", width=8),
    ts("Flush latency p95", [(f"histogram_quantile(0.95, sum by (instance, le) (rate(pylon_storage_flush_seconds_bucket{sel()}[{RATE}])))", "{{instance}}")], unit="s", width=8),
    ts("Peerstore", [(f"libp2p_peerstore_peers{sel()}", "{{instance}}")], width=8),
    ts("Identify", [
        (f"sum by (dir) (rate(libp2p_identify_identify_total{sel()}[{RATE}]))", "identify {{dir}}"),
        (f"sum by (dir) (rate(libp2p_identify_identify_push_total{sel()}[{RATE}]))", "push {{dir}}")], unit="ops"),
    ts("Our addresses (AutoNAT verdicts)", [(f"sum by (verdict) (pylon_reachability_addresses{sel()})", "{{verdict}}")]),
]

RELAY = [
    row("Capacity"),
    stat("Reservations held", f"sum(pylon_relay_reservations{sel()})", width=6),
    stat("Reservation limit", f"sum(pylon_relay_max_reservations{sel()})", width=6),
    stat("Circuits open", f"sum(pylon_relay_circuits{sel()})", width=6),
    stat("Circuit limit", f"sum(pylon_relay_max_circuits{sel()})", width=6),
    ts("Reservations against the limit", [
        (f"pylon_relay_reservations{sel()} / pylon_relay_max_reservations{sel()}", "reservations {{instance}}"),
        (f"pylon_relay_circuits{sel()} / pylon_relay_max_circuits{sel()}", "circuits {{instance}}")], unit="percentunit",
       desc="PylonRelaySaturated fires at 90%."),
    ts("Relayed bytes", [(f"sum by (instance) (rate(libp2p_relaysvc_data_transferred_bytes_total{sel()}[{RATE}]))", "{{instance}}")], unit="Bps"),
    row("Requests"),
    ts("Reservations by type", [(f"sum by (type) (rate(libp2p_relaysvc_reservations_total{sel()}[{RATE}]))", "{{type}}")], unit="ops"),
    ts("Reservation refusals", [(f"sum by (reason) (rate(libp2p_relaysvc_reservation_rejections_total{sel()}[{RATE}]))", "{{reason}}")], unit="ops"),
    ts("Circuit requests by status", [(f"sum by (status) (rate(libp2p_relaysvc_connection_request_response_status_total{sel()}[{RATE}]))", "{{status}}")], unit="ops"),
    ts("Circuit refusals", [(f"sum by (reason) (rate(libp2p_relaysvc_connection_rejections_total{sel()}[{RATE}]))", "{{reason}}")], unit="ops"),
    ts("Circuits ended", [(f"sum by (outcome) (rate(pylon_relay_circuits_ended_total{sel()}[{RATE}]))", "{{outcome}}")], unit="ops",
       desc="closed by an end, data_limit, duration_limit, failed, shutdown."),
    ts("Circuit life", [
        (f"histogram_quantile(0.5, sum by (le) (rate(libp2p_relaysvc_connection_duration_seconds_bucket{sel()}[{RATE}])))", "p50"),
        (f"histogram_quantile(0.95, sum by (le) (rate(libp2p_relaysvc_connection_duration_seconds_bucket{sel()}[{RATE}])))", "p95")], unit="s"),
    ts("Malformed hop requests", [(f"sum by (status) (rate(pylon_relay_bad_requests_total{sel()}[{RATE}]))", "{{status}}")], unit="ops"),
    ts("Hole punches (DCUtR)", [(f"sum by (side, outcome) (rate(libp2p_holepunch_outcomes_total{sel()}[{RATE}]))", "{{side}} {{outcome}}")], unit="ops"),
]

AUTONAT = [
    row("Server"),
    ts("Dial-backs", [(f"sum by (version, outcome) (rate(pylon_autonat_dial_backs_total{sel()}[{RATE}]))", "{{version}} {{outcome}}")], unit="ops"),
    ts("Refused requests", [(f"sum by (version, reason) (rate(pylon_autonat_refused_total{sel()}[{RATE}]))", "{{version}} {{reason}}")], unit="ops",
       desc="Budgets (per peer, IP, subnet, total), bad requests, relayed connections. PylonAutonatAbuseRefused watches this."),
    ts("Dial-backs in progress", [(f"sum by (instance) (pylon_autonat_dial_backs_in_progress{sel()})", "{{instance}}")]),
    ts("Dial data received", [(f"sum by (instance) (rate(pylon_autonat_dial_data_bytes_total{sel()}[{RATE}]))", "{{instance}}")], unit="Bps"),
    ts("v1 answers", [(f"sum by (response_status) (rate(libp2p_autonat_outgoing_dial_response_total{sel()}[{RATE}]))", "{{response_status}}")], unit="ops"),
    ts("v2 answers", [(f"sum by (response_status, dial_status) (rate(libp2p_autonatv2_requests_completed_total{sel()}[{RATE}]))", "{{response_status}} {{dial_status}}")], unit="ops"),
    row("This node's reachability (client)"),
    stat("Reachability", f"libp2p_autonat_reachability_status{sel()}", mappings=REACHABILITY, width=8),
    stat("Confidence", f"libp2p_autonat_reachability_status_confidence{sel()}", width=8),
    stat("Addresses reachable", f"sum(pylon_reachability_addresses{sel_reachable})", width=8),
    ts("Client requests", [(f"sum by (outcome) (rate(libp2p_autonatv2_client_requests_total{sel()}[{RATE}]))", "{{outcome}}")], unit="ops"),
    ts("Responses received (v1)", [(f"sum by (response_status) (rate(libp2p_autonat_received_dial_response_total{sel()}[{RATE}]))", "{{response_status}}")], unit="ops"),
]

DHT = [
    row("Routing table"),
    stat("Routing table peers", f"sum(libp2p_kad_routing_table_peers{sel()})", width=6),
    stat("Network size estimate", f"max(libp2p_kad_network_size_estimate{sel()})", width=6),
    stat("Records", f"sum(libp2p_kad_records{sel()})", width=6),
    stat("Provider records", f"sum(libp2p_kad_provider_records{sel()})", width=6),
    ts("Routing table", [(f"libp2p_kad_routing_table_peers{sel()}", "{{instance}}")],
       desc="PylonDhtRoutingTableShrinking fires when it halves within 30 minutes."),
    ts("Routing table refusals", [(f"sum by (reason) (rate(libp2p_kad_routing_table_refusals_total{sel()}[{RATE}]))", "{{reason}}")], unit="ops"),
    row("Requests"),
    ts("Inbound requests", [(f"sum by (kind, outcome) (rate(libp2p_kad_inbound_requests_total{sel()}[{RATE}]))", "{{kind}} {{outcome}}")], unit="ops"),
    ts("Outbound requests", [(f"sum by (kind, outcome) (rate(libp2p_kad_outbound_requests_total{sel()}[{RATE}]))", "{{kind}} {{outcome}}")], unit="ops"),
    ts("Lookup duration", [(f"histogram_quantile(0.95, sum by (type, le) (rate(libp2p_kad_query_result_duration_seconds_bucket{sel()}[{RATE}])))", "p95 {{type}}")], unit="s"),
    ts("Requests per lookup", [(f"histogram_quantile(0.5, sum by (type, le) (rate(libp2p_kad_query_result_num_requests_bucket{sel()}[{RATE}])))", "p50 {{type}}")]),
    row("Bootstrap role"),
    ts("Connections shed", [
        (f"sum by (instance) (rate(pylon_bootstrap_shed_connections_total{sel()}[{RATE}]))", "shed {{instance}}"),
        (f"sum by (instance) (rate(pylon_bootstrap_idle_connections_closed_total{sel()}[{RATE}]))", "idle closed {{instance}}")], unit="ops",
       desc="Served peers shed above roles.bootstrap.low_watermark, idle connections closed."),
    ts("Inbound connections per transport", [(f"sum by (transport) (rate(libp2p_swarm_connections_opened_total{sel_inbound}[{RATE}]))", "{{transport}}")], unit="ops"),
]

BOOSTER = [
    row("Coverage and size"),
    stat("Heads", f"sum(pylon_booster_heads{sel()})", width=6),
    stat("Keyspace coverage", f"max(pylon_booster_coverage{sel()})", unit="percentunit", width=6,
         desc="Share of the last crawl's peers whose 20 closest include a head."),
    stat("Network size (crawl)", f"max(pylon_booster_network_size{sel()})", width=6),
    stat("Churn per hour", f"max(pylon_booster_churn_per_hour{sel()})", unit="percentunit", width=6),
    ts("Heads and coverage", [
        (f"pylon_booster_heads{sel()}", "heads {{instance}}"),
        (f"pylon_booster_coverage{sel()} * 100", "coverage % {{instance}}")]),
    ts("Sizing decisions", [(f"sum by (outcome) (increase(pylon_booster_decisions_total{sel()}[1h]))", "{{outcome}}")],
       desc="below_target, above_target, budget, low_value, hold: one per crawl."),
    row("Value"),
    ts("GET requests answered by the heads", [(f"sum by (kind, result) (rate(pylon_booster_gets_total{sel()}[{RATE}]))", "{{kind}} {{result}}")], unit="ops",
       desc="found: from the shared store; cached: found, put there by the prefetch; missed: closer peers only."),
    ts("Answered from the store", [
        (f"sum(rate(pylon_booster_gets_total{sel_found}[{RATE}])) / sum(rate(pylon_booster_gets_total{sel()}[{RATE}]))", "found or cached"),
        (f"sum(rate(pylon_booster_gets_total{sel_cached}[{RATE}])) / sum(rate(pylon_booster_gets_total{sel()}[{RATE}]))", "cache hits")], unit="percentunit"),
    ts("Prefetch", [(f"sum by (outcome) (rate(pylon_booster_prefetch_total{sel()}[{RATE}]))", "{{outcome}}")], unit="ops",
       desc="started, coalesced, recent, busy, over_budget: what a miss on a head close to the key did."),
    ts("Prefetch results", [
        (f"sum by (outcome) (rate(pylon_booster_prefetch_results_total{sel()}[{RATE}]))", "{{outcome}}"),
        (f"sum(pylon_booster_prefetch_running{sel()})", "running")], unit="ops"),
    row("Cost"),
    ts("Memory per head", [(f"process_resident_memory_bytes{sel()} / clamp_min(pylon_booster_heads{sel()}, 1)", "{{instance}}")], unit="bytes", width=8,
       desc="The process's resident memory over its heads: an upper bound of a head's cost."),
    ts("CPU", [(f"rate(process_cpu_seconds_total{sel()}[{RATE}])", "{{instance}}")], unit="percentunit", width=8),
    ts("Crawl requests and head failures", [
        (f"rate(pylon_booster_crawl_requests_total{sel()}[{RATE}])", "crawl {{instance}}"),
        (f"increase(pylon_booster_head_failures_total{sel()}[1h])", "head failures (1h) {{instance}}")], width=8),
]

DASHBOARDS = {
    "pylon-overview": ("Pylon / Overview", OVERVIEW),
    "pylon-relay": ("Pylon / Relay", RELAY),
    "pylon-autonat": ("Pylon / AutoNAT", AUTONAT),
    "pylon-dht": ("Pylon / DHT and bootstrap", DHT),
    "pylon-booster": ("Pylon / DHT booster", BOOSTER),
}


def panel_json(p, pid, x, y):
    base = {"id": pid, "type": p["type"], "title": p["title"],
            "gridPos": {"h": p["h"], "w": p["w"], "x": x, "y": y}}
    if p["type"] == "row":
        base.update({"collapsed": False, "panels": []})
        return base
    base["datasource"] = {"type": "prometheus", "uid": "${datasource}"}
    if p["description"]:
        base["description"] = p["description"]
    base["targets"] = [
        {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend or "__auto",
         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
        for i, (expr, legend) in enumerate(p["targets"])]
    defaults = {"unit": p["unit"]}
    if p["type"] == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                              "stacking": {"mode": "normal" if p["stack"] else "none"}}
        base["options"] = {"legend": {"displayMode": "list", "placement": "bottom"},
                           "tooltip": {"mode": "multi"}}
    else:
        base["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                             "values": False},
                           "colorMode": "value", "graphMode": "none", "textMode": "auto"}
        if p["mappings"]:
            defaults["mappings"] = p["mappings"]
    base["fieldConfig"] = {"defaults": defaults, "overrides": []}
    return base


def dashboard(uid, title, panels):
    out, x, y, pid, row_h = [], 0, 0, 1, 0
    for p in panels:
        if x + p["w"] > 24 or p["type"] == "row":
            if x:
                y += row_h
            x, row_h = 0, 0
        out.append(panel_json(p, pid, x, y))
        pid += 1
        row_h = max(row_h, p["h"])
        x += p["w"]
        if p["type"] == "row":
            y += 1
            x, row_h = 0, 0
    return {
        "uid": uid,
        "title": title,
        "tags": ["pylon", "libp2p"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "links": [{"type": "dashboards", "tags": ["pylon"], "asDropdown": True,
                   "title": "Pylon dashboards", "includeVars": True, "keepTime": True}],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0},
            {"name": "instance", "label": "Instance", "type": "query",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(pylon_build_info, instance)", "refId": "instance"},
             "definition": "label_values(pylon_build_info, instance)",
             "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
             "current": {}, "hide": 0, "sort": 1},
        ]},
        "annotations": {"list": []},
        "panels": out,
    }


def main():
    """Writes the dashboards; with --check, only says whether the files are up to date."""
    check = "--check" in sys.argv[1:]
    stale = []
    for uid, (title, panels) in DASHBOARDS.items():
        path = HERE / f"{uid}.json"
        text = json.dumps(dashboard(uid, title, panels), indent=2) + "\n"
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
            continue
        path.write_text(text)
        print(f"wrote {path.relative_to(HERE.parent.parent)}")
    if stale:
        sys.exit(f"ops/grafana: {', '.join(stale)} differ from build.py: run python3 ops/grafana/build.py")
    if check:
        print(f"ops/grafana: {len(DASHBOARDS)} dashboards up to date")


if __name__ == "__main__":
    main()
