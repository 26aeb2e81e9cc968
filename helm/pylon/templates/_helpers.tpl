{{/*
Names and labels.
*/}}
{{- define "pylon.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The StatefulSet's name, and so the pods' (<fullname>-0, -1, …). Kept to 52 characters:
a pod's name gets "-N" and its per-pod Service "-p2p-N" (at most 63 characters).
*/}}
{{- define "pylon.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pylon.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pylon.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pylon.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pylon.labels" -}}
helm.sh/chart: {{ include "pylon.chart" . }}
{{ include "pylon.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pylon
{{- end }}

{{- define "pylon.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pylon.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pylon.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The multiaddrs peers dial for an IP (v4 or v6) or a DNS name: TCP and QUIC on a port.
Input: dict "host" "203.0.113.7" "port" 4001, and "proto" ("ip4", "dns") to
force one.
*/}}
{{- define "pylon.addrs" -}}
{{- $proto := "ip4" }}
{{- if .proto }}{{ $proto = .proto }}
{{- else if contains ":" .host }}{{ $proto = "ip6" }}
{{- else if regexMatch "[a-zA-Z]" .host }}{{ $proto = "dns" }}
{{- end }}
{{- list (printf "/%s/%s/tcp/%d" $proto .host (int .port)) (printf "/%s/%s/udp/%d/quic-v1" $proto .host (int .port)) | toJson }}
{{- end }}

{{/*
How the pod's address is announced (README.md of the chart, "Addresses"); one way at most.
*/}}
{{- define "pylon.announceMode" -}}
{{- $modes := list }}
{{- if (dig "identify" "announce" nil .Values.config) }}{{ $modes = append $modes "config.identify.announce" }}{{ end }}
{{- if and (eq .Values.p2p.exposure "service") .Values.p2p.service.loadBalancerIPs }}{{ $modes = append $modes "p2p.service.loadBalancerIPs" }}{{ end }}
{{- if .Values.announce.hostIP }}{{ $modes = append $modes "announce.hostIP" }}{{ end }}
{{- if .Values.announce.dnsDomain }}{{ $modes = append $modes "announce.dnsDomain" }}{{ end }}
{{- if gt (len $modes) 1 }}
{{- fail (printf "set one way of announcing the node's address, not %s" (join " and " $modes)) }}
{{- end }}
{{- if and .Values.announce.hostIP (eq .Values.p2p.exposure "service") }}
{{- fail "announce.hostIP needs p2p.exposure hostPort or hostNetwork (with a Service, peers dial the Service's address)" }}
{{- end }}
{{- if and (eq .Values.p2p.exposure "service") .Values.p2p.service.loadBalancerIPs (lt (len .Values.p2p.service.loadBalancerIPs) (int .Values.replicaCount)) }}
{{- fail (printf "p2p.service.loadBalancerIPs has %d addresses for %d replicas: one per pod, by ordinal" (len .Values.p2p.service.loadBalancerIPs) (int .Values.replicaCount)) }}
{{- end }}
{{- if and (eq .Values.p2p.exposure "service") .Values.p2p.service.nodePorts (lt (len .Values.p2p.service.nodePorts) (int .Values.replicaCount)) }}
{{- fail (printf "p2p.service.nodePorts has %d ports for %d replicas: one per pod, by ordinal" (len .Values.p2p.service.nodePorts) (int .Values.replicaCount)) }}
{{- end }}
{{- if $modes }}{{ index $modes 0 }}{{ else }}observed{{ end }}
{{- end }}

{{/*
The booster role's heads as the chart publishes them (README.md of the chart, "The
booster role"): head i listens on port_base + i, i < max_heads, on the transports its
`listen` templates name. A key left out of config.roles.booster keeps Pylon's default,
so the defaults here are Pylon's (roles/src/booster/mod.rs, Config::default); chart.py
holds them to the binary's. Refuses what cannot be published. Input: the root context.
Output: JSON, {} with the role off, else {"base", "last", "heads", "protocols"}
(protocols: "TCP", "UDP"; base 0: ports the system picks).
*/}}
{{- define "pylon.booster" -}}
{{- $b := dig "roles" "booster" nil .Values.config }}
{{- if kindIs "map" $b }}
{{- $base := 4101 }}
{{- if not (kindIs "invalid" (index $b "port_base")) }}{{ $base = int (index $b "port_base") }}{{ end }}
{{- $heads := 64 }}
{{- if not (kindIs "invalid" (index $b "max_heads")) }}{{ $heads = int (index $b "max_heads") }}{{ end }}
{{- $listen := list "/ip4/0.0.0.0/tcp/{port}" "/ip4/0.0.0.0/udp/{port}/quic-v1" }}
{{- if not (kindIs "invalid" (index $b "listen")) }}{{ $listen = index $b "listen" }}{{ end }}
{{- $tcp := false }}
{{- $udp := false }}
{{- range $listen }}
{{- if contains "/tcp/{port}" . }}{{ $tcp = true }}{{ end }}
{{- if contains "/udp/{port}" . }}{{ $udp = true }}{{ end }}
{{- end }}
{{- $protocols := list }}
{{- if $tcp }}{{ $protocols = append $protocols "TCP" }}{{ end }}
{{- if $udp }}{{ $protocols = append $protocols "UDP" }}{{ end }}
{{- $last := sub (add $base $heads) 1 }}
{{- $exposure := .Values.p2p.exposure }}
{{- if and (eq $exposure "service") (eq .Values.p2p.service.type "NodePort") }}
{{- fail (printf "config.roles.booster with p2p.service.type NodePort: every head port would take a node port for each pod, %d per replica out of the cluster's node port range (30000-32767 by default, 2768 ports for the whole cluster); use p2p.service.type LoadBalancer, or p2p.exposure hostPort or hostNetwork" (mul $heads (len $protocols))) }}
{{- end }}
{{- if and (eq $base 0) (ne $exposure "hostNetwork") }}
{{- fail (printf "config.roles.booster.port_base 0 lets the system pick the heads' ports, which p2p.exposure %s cannot publish: set port_base to the first of max_heads free ports, or use p2p.exposure hostNetwork" $exposure) }}
{{- end }}
{{- if and $base (gt $last 65535) }}
{{- fail (printf "config.roles.booster: the last head's port, port_base + max_heads - 1 = %d, must be at most 65535: lower port_base or max_heads" $last) }}
{{- end }}
{{- if $base }}
{{- range $key, $port := dict "p2p.port" .Values.p2p.port "metrics.port" .Values.metrics.port "admin.port" .Values.admin.port }}
{{- if and (le $base (int $port)) (le (int $port) $last) }}
{{- fail (printf "config.roles.booster: the heads' ports %d-%d (port_base to port_base + max_heads - 1) include %s (%d): move config.roles.booster.port_base, or %s, out of that range" $base $last $key (int $port) $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- dict "base" $base "last" $last "heads" $heads "protocols" $protocols | toJson }}
{{- else }}{}
{{- end }}
{{- end }}

{{/*
Pylon's config as the chart writes it: .Values.config, plus `listen` on p2p.port when the
values name none. Input: the root context. Output: YAML of the map (fromYaml it).
*/}}
{{- define "pylon.config" -}}
{{- $config := deepCopy .Values.config }}
{{- if not (hasKey $config "listen") }}
{{- $port := int .Values.p2p.port }}
{{- $_ := set $config "listen" (list (printf "/ip4/0.0.0.0/tcp/%d" $port) (printf "/ip6/::/tcp/%d" $port) (printf "/ip4/0.0.0.0/udp/%d/quic-v1" $port) (printf "/ip6/::/udp/%d/quic-v1" $port)) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
A map as TOML: its keys with plain values first, then each sub-map as a [table] (an empty
map is an empty table: that is how a role is turned on with its defaults). Helm reads
every number in values as a float, and toToml would write 1024 as 1024.0, which Pylon
refuses for a count; whole numbers are written as integers here. A null value is left
out (the key keeps its default). Input: dict "table" MAP "path" "a.b" ("" at the top).
*/}}
{{- define "pylon.toml.table" -}}
{{- $path := .path }}
{{- range $k, $v := .table }}
{{- if and (not (kindIs "map" $v)) (not (kindIs "invalid" $v)) }}
{{ $k }} = {{ include "pylon.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := .table }}
{{- if kindIs "map" $v }}
{{- $sub := ternary $k (printf "%s.%s" $path $k) (eq $path "") }}

[{{ $sub }}]
{{- include "pylon.toml.table" (dict "table" $v "path" $sub) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pylon.toml.value" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ ternary "true" "false" . }}
{{- else if kindIs "float64" . }}{{ if eq . (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) }}{{ . }}
{{- else if kindIs "slice" . }}[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "pylon.toml.value" $e }}{{ end }}]
{{- else }}{{ fail (printf "config: cannot write %v (%s) as TOML" . (kindOf .)) }}
{{- end }}
{{- end }}

{{/*
The pylon.toml of the ConfigMap. Input: dict "root" $ "announce" LIST-or-nil.
*/}}
{{- define "pylon.toml" -}}
{{- $config := include "pylon.config" .root | fromYaml }}
{{- if .announce }}
{{- $identify := default dict (get $config "identify") }}
{{- $_ := set $identify "announce" .announce }}
{{- $_ := set $config "identify" $identify }}
{{- end -}}
# Pylon's config, written by the Helm chart from .Values.config (one key here for each
# key there; README.md, "Configuration"). Every key not written keeps the embedded
# default. The pod's PYLON_* environment sets data_dir, metrics.listen and admin.listen.
{{- include "pylon.toml.table" (dict "table" $config "path" "") }}
{{ end }}
