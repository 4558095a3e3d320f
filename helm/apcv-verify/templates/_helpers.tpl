{{/*
Names and labels, as in the community charts (helm create, prometheus-community).
*/}}
{{- define "apcv-verify.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "apcv-verify.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "apcv-verify.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "apcv-verify.selectorLabels" -}}
app.kubernetes.io/name: {{ include "apcv-verify.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "apcv-verify.labels" -}}
helm.sh/chart: {{ include "apcv-verify.chart" . }}
{{ include "apcv-verify.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: apcv-verify
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "apcv-verify.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "apcv-verify.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "apcv-verify.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The label that lets a client pod through the NetworkPolicy when allowExternal is false. */}}
{{- define "apcv-verify.clientLabel" -}}
{{ include "apcv-verify.fullname" . }}-client
{{- end }}

{{/* HOST:PORT of a container port on `listenAddress`, an IPv6 address in brackets;
called with (list $ port). */}}
{{- define "apcv-verify.listen" -}}
{{- $root := index . 0 }}
{{- $host := $root.Values.listenAddress }}
{{- if contains ":" $host }}[{{ $host }}]{{ else }}{{ $host }}{{ end }}:{{ index . 1 }}
{{- end }}

{{/* The TCP ports of the list URLs and the client CRLs' (443 for https://, 80 for http://
without one), a JSON array without repeats: what a closed egress must let through. */}}
{{- define "apcv-verify.listPorts" -}}
{{- $ports := list }}
{{- range (concat (prepend .Values.trust.statusListUrls .Values.trust.trustListUrl) .Values.tls.clientCrls.urls) }}
{{- $url := urlParse . }}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $url.host) }}
{{- if not $port }}{{ $port = ternary "443" "80" (eq (lower $url.scheme) "https") }}{{ end }}
{{- $ports = append $ports (int $port) }}
{{- end }}
{{- $ports | uniq | toJson }}
{{- end }}

{{/* The TCP ports of the replay store: networkPolicy.redisPort (the data nodes a sentinel
names) and the port of each host of redis.url (sentinels, cluster nodes; without one, the
server's default: 26379 for a sentinel, else 6379), a JSON array. */}}
{{- define "apcv-verify.redisPorts" -}}
{{- $ports := list (int .Values.networkPolicy.redisPort) }}
{{- $hosts := regexReplaceAll "^[^:]+://([^/]*).*$" .Values.redis.url "${1}" }}
{{- $default := ternary "26379" "6379" (contains "+sentinel://" .Values.redis.url) }}
{{- range (splitList "," $hosts) }}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" .) }}
{{- $ports = append $ports (int (default $default $port)) }}
{{- end }}
{{- $ports | uniq | toJson }}
{{- end }}

{{/* Where the ConfigMap, the anchors and the TLS files are mounted. */}}
{{- define "apcv-verify.configDir" -}}/etc/apcv-verify{{- end }}
{{- define "apcv-verify.tlsDir" -}}/etc/apcv-verify-tls{{- end }}
{{- define "apcv-verify.redisTlsDir" -}}/etc/apcv-verify-redis-tls{{- end }}
{{- define "apcv-verify.trustTlsDir" -}}/etc/apcv-verify-trust-tls{{- end }}
{{- define "apcv-verify.clientCrlDir" -}}/etc/apcv-verify-client-crls{{- end }}
{{- /* Whether the Redis TLS Secret is mounted: a redis backend with `redis.tls.existingSecret`. */}}
{{- define "apcv-verify.redisTls" -}}
{{- if and (eq .Values.config.replay.backend "redis") .Values.redis.tls.existingSecret }}true{{ end }}
{{- end }}
{{- /* Where `audit.volume` is mounted: `config.audit.path` must be a file in it (schema). */}}
{{- define "apcv-verify.auditDir" -}}/var/log/apcv-verify{{- end }}

{{/*
One TOML value from a values.yaml value: booleans, integers (values.yaml numbers arrive as
float64: written without a fraction when they have none), floats, strings and lists of
strings (JSON's syntax for these is TOML's), tables of lists (inline tables).
*/}}
{{- define "apcv-verify.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "bool" $v -}}
{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- if eq (float64 $v) (floor $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end -}}
{{- else if kindIs "map" $v -}}
{ {{- $first := true }}{{ range $key, $item := $v }}{{ if not $first }},{{ end }}{{ $first = false }} {{ toJson $key }} = {{ include "apcv-verify.tomlValue" $item }}{{ end }} }
{{- else -}}
{{ toJson $v }}
{{- end -}}
{{- end }}

{{/* The keys of one `config` section, one "key = value" line each. */}}
{{- define "apcv-verify.tomlSection" -}}
{{- range $key, $value := . }}
{{ $key }} = {{ include "apcv-verify.tomlValue" $value }}
{{- end }}
{{- end }}

{{/* The Redis URL with the password inserted from the APCV_REDIS_PASSWORD variable. */}}
{{- define "apcv-verify.redisUrl" -}}
{{- if .Values.redis.existingSecret -}}
{{- $parts := splitn "://" 2 .Values.redis.url -}}
{{ $parts._0 }}://{{ .Values.redis.username }}:$(APCV_REDIS_PASSWORD)@{{ $parts._1 }}
{{- else -}}
{{ .Values.redis.url }}
{{- end -}}
{{- end }}

{{/* Checks the values cannot express in values.schema.json. */}}
{{- define "apcv-verify.validate" -}}
{{- $grace := add (int .Values.preStopSleepSeconds) (int .Values.config.server.grace_seconds) }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $grace) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be longer than preStopSleepSeconds + config.server.grace_seconds (%v), or the kubelet cuts the drain short" .Values.terminationGracePeriodSeconds $grace) }}
{{- end }}
{{- $replicated := or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) (gt (int .Values.config.server.workers) 1) }}
{{- if and $replicated (eq .Values.config.replay.backend "memory") }}
{{- fail "config.replay.backend: \"memory\" is per process: with several replicas, autoscaling or workers a replayed presentation would be accepted again; use \"redis\"" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.existingSecret: required when tls.enabled (a Secret with tls.crt, tls.key and, for mTLS, ca.crt)" }}
{{- end }}
{{- if and (or .Values.tls.clientCrls.configMap .Values.tls.clientCrls.urls) (not (and .Values.tls.enabled .Values.tls.clientAuth)) }}
{{- fail "tls.clientCrls: needs mTLS (tls.enabled and tls.clientAuth: the CRLs are of the client CAs)" }}
{{- end }}
{{- if and (eq .Values.config.replay.backend "redis") (not .Values.redis.url) }}
{{- fail "redis.url: required when config.replay.backend is \"redis\"" }}
{{- end }}
{{- if and .Values.redis.sentinelAuth (or (not .Values.redis.existingSecret) (not (contains "+sentinel://" .Values.redis.url))) }}
{{- fail "redis.sentinelAuth: needs a redis+sentinel:// or rediss+sentinel:// redis.url and its password in redis.existingSecret" }}
{{- end }}
{{- if and .Values.redis.sentinelUsername (not .Values.redis.sentinelAuth) }}
{{- fail "redis.sentinelUsername: needs redis.sentinelAuth (the user's password is the Secret's)" }}
{{- end }}
{{- if and .Values.redis.username (not .Values.redis.existingSecret) }}
{{- fail "redis.username: needs its password in redis.existingSecret" }}
{{- end }}
{{- if and (not .Values.redis.tls.checkHostname) (not (include "apcv-verify.redisTls" .)) }}
{{- fail "redis.tls.checkHostname: false needs redis.tls.existingSecret (the Redis servers' own CA)" }}
{{- end }}
{{- if and (include "apcv-verify.redisTls" .) (not (hasPrefix "rediss" .Values.redis.url)) }}
{{- fail "redis.tls.existingSecret: needs a TLS redis.url (rediss://, rediss+sentinel:// or rediss+cluster://)" }}
{{- end }}
{{- $httpsLists := false }}
{{- range (prepend .Values.trust.statusListUrls .Values.trust.trustListUrl) }}
{{- if hasPrefix "https://" (lower .) }}{{ $httpsLists = true }}{{ end }}
{{- end }}
{{- if and .Values.trust.tls.existingSecret (not $httpsLists) }}
{{- fail "trust.tls.existingSecret: needs an https:// trust.trustListUrl or trust.statusListUrls" }}
{{- end }}
{{- if and .Values.trust.tls.clientCertificate (not .Values.trust.tls.existingSecret) }}
{{- fail "trust.tls.clientCertificate: needs trust.tls.existingSecret (with tls.crt and tls.key)" }}
{{- end }}
{{- end }}
