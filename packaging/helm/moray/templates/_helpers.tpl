{{/* Names, labels and the values every template shares. */}}

{{- define "moray.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-moray, or the release name alone when it already says moray */}}
{{- define "moray.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "moray.agent.fullname" -}}{{ include "moray.fullname" . }}-agent{{- end }}
{{- define "moray.server.fullname" -}}{{ include "moray.fullname" . }}-server{{- end }}
{{- define "moray.gateway.fullname" -}}{{ include "moray.fullname" . }}-gateway{{- end }}
{{- define "moray.kubeEnforcer.fullname" -}}{{ include "moray.fullname" . }}-kube-enforcer{{- end }}

{{- define "moray.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "moray.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: moray
{{- end }}

{{/* selector labels of one component: (dict "ctx" $ "component" "agent") */}}
{{- define "moray.selectorLabels" -}}
app.kubernetes.io/name: {{ include "moray.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "moray.componentLabels" -}}
{{ include "moray.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* image of a component: (dict "ctx" $ "image" .Values.agent.image) */}}
{{- define "moray.image" -}}
{{- $registry := .ctx.Values.image.registry -}}
{{- $repo := .image.repository -}}
{{- $ref := ternary $repo (printf "%s/%s" $registry $repo) (empty $registry) -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $ref .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (.image.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion) -}}
{{- end -}}
{{- end }}

{{/* the server Service's DNS names (its certificate must cover each) */}}
{{- define "moray.server.dnsNames" -}}
{{- $svc := include "moray.server.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) | toJson -}}
{{- end }}

{{/* the kube-enforcer Service's DNS names: its serving certificate covers each (the API
server calls <svc>.<ns>.svc) */}}
{{- define "moray.kubeEnforcer.dnsNames" -}}
{{- $svc := include "moray.kubeEnforcer.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) | toJson -}}
{{- end }}

{{/* the kube-enforcer's --server: kubeEnforcer.serverUrl or this release's REST API */}}
{{- define "moray.kubeEnforcer.serverUrl" -}}
{{- with .Values.kubeEnforcer.serverUrl }}{{ . }}
{{- else }}
{{- printf "%s://%s:%v" (ternary "https" "http" .Values.server.http.tls) (include "moray.server.host" .) .Values.server.ports.http }}
{{- end }}
{{- end }}

{{- define "moray.kubeEnforcer.tokenSecret" -}}
{{- .Values.kubeEnforcer.token.existingSecret | default (printf "%s-token" (include "moray.kubeEnforcer.fullname" .)) -}}
{{- end }}

{{/* the webhook's config file: kubeEnforcer.settings plus the keys the chart owns (they
must agree with the webhook configuration) */}}
{{- define "moray.kubeEnforcer.config" -}}
{{- $k := .Values.kubeEnforcer -}}
{{- $owned := dict "namespace" .Release.Namespace "mode" $k.mode "unregistered" $k.unregistered "failurePolicy" $k.failurePolicy "requestTimeout" (sub (int $k.timeoutSeconds) 2) "excludeNamespaces" (include "moray.kubeEnforcer.excluded" . | fromJsonArray) -}}
{{- toYaml (merge $owned (deepCopy $k.settings)) -}}
{{- end }}

{{- define "moray.kubeEnforcer.excluded" -}}
{{- concat (list "kube-system" .Release.Namespace) .Values.kubeEnforcer.excludeNamespaces | uniq | toJson -}}
{{- end }}

{{- define "moray.server.host" -}}
{{- printf "%s.%s.svc" (include "moray.server.fullname" .) .Release.Namespace -}}
{{- end }}

{{- define "moray.gateway.host" -}}
{{- printf "%s.%s.svc" (include "moray.gateway.fullname" .) .Release.Namespace -}}
{{- end }}

{{/* the agent's --server */}}
{{- define "moray.agent.serverAddress" -}}
{{- with .Values.agent.enrollment.serverAddress }}{{ . }}
{{- else }}
{{- if .Values.gateway.enabled }}
{{- printf "%s:%v" (include "moray.gateway.host" .) .Values.gateway.port }}
{{- else }}
{{- printf "%s:%v" (include "moray.server.host" .) .Values.server.ports.grpc }}
{{- end }}
{{- end }}
{{- end }}

{{/* the agent's --enroll-server */}}
{{- define "moray.agent.enrollAddress" -}}
{{- with .Values.agent.enrollment.enrollAddress }}{{ . }}
{{- else }}
{{- printf "%s:%v" (include "moray.server.host" .) .Values.server.ports.enroll }}
{{- end }}
{{- end }}

{{- define "moray.agent.enrollmentSecret" -}}
{{- .Values.agent.enrollment.existingSecret | default (printf "%s-enrollment" (include "moray.agent.fullname" .)) -}}
{{- end }}

{{- define "moray.server.databaseSecret" -}}
{{- .Values.server.database.postgresql.existingSecret | default (printf "%s-database" (include "moray.server.fullname" .)) -}}
{{- end }}

{{/* refuse value combinations the schema cannot express */}}
{{- define "moray.validate" -}}
{{- $s := .Values.server -}}
{{- if and $s.enabled (gt (int $s.replicas) 1) (ne $s.database.type "postgresql") -}}
{{- fail "server.replicas > 1 needs server.database.type=postgresql (SQLite is one server per file)" -}}
{{- end -}}
{{- if and $s.enabled (gt (int $s.replicas) 1) (not $s.pki.existingSecret) -}}
{{- fail "server.replicas > 1 needs server.pki.existingSecret: every server must hold the same CA and policy key" -}}
{{- end -}}
{{- if and $s.enabled (not $s.persistence.enabled) (not $s.pki.existingSecret) -}}
{{- fail "server.persistence.enabled=false needs server.pki.existingSecret: a restarted server would make a new CA and every agent would refuse it" -}}
{{- end -}}
{{- if and $s.enabled (not $s.persistence.enabled) (ne $s.database.type "postgresql") -}}
{{- fail "server.persistence.enabled=false needs server.database.type=postgresql (SQLite would be lost with the pod)" -}}
{{- end -}}
{{- if and $s.enabled (eq $s.database.type "postgresql") (not $s.database.postgresql.existingSecret) (not $s.database.postgresql.url) -}}
{{- fail "server.database.type=postgresql needs server.database.postgresql.existingSecret or .url" -}}
{{- end -}}
{{- if and .Values.gateway.enabled (not .Values.gateway.pki.existingSecret) -}}
{{- fail "gateway.enabled needs gateway.pki.existingSecret (gateway.key, gateway.pem, ca.pem from `moray gateway cert`)" -}}
{{- end -}}
{{- $k := .Values.kubeEnforcer -}}
{{- if $k.enabled -}}
{{- if not $k.caPem -}}
{{- fail "kubeEnforcer.enabled needs kubeEnforcer.caPem: the server's CA (<server data dir>/pki/ca.pem), the webhook configuration's caBundle" -}}
{{- end -}}
{{- if and (not $k.token.existingSecret) (not $k.token.value) -}}
{{- fail "kubeEnforcer.enabled needs kubeEnforcer.token.existingSecret (or .value): an admission token, `moray tokens create kube-enforcer admission`" -}}
{{- end -}}
{{- if and (not .Values.server.enabled) (not $k.serverUrl) -}}
{{- fail "kubeEnforcer needs this release's server (server.enabled) or kubeEnforcer.serverUrl" -}}
{{- end -}}
{{- if and (eq $k.certificate.source "secret") (not $k.certificate.existingSecret) -}}
{{- fail "kubeEnforcer.certificate.source=secret needs kubeEnforcer.certificate.existingSecret (a kubernetes.io/tls Secret)" -}}
{{- end -}}
{{- range $key := list "namespace" "mode" "unregistered" "failurePolicy" "requestTimeout" "excludeNamespaces" -}}
{{- if hasKey $k.settings $key -}}
{{- fail (printf "kubeEnforcer.settings.%s: set by the chart (kubeEnforcer.mode, .unregistered, .failurePolicy, .timeoutSeconds, .excludeNamespaces)" $key) -}}
{{- end -}}
{{- end -}}
{{- if and (eq $k.unregistered "scan") (not (and $k.settings.scan (or $k.settings.scan.policy $k.settings.scan.policyFile))) -}}
{{- fail "kubeEnforcer.unregistered=scan needs kubeEnforcer.settings.scan.policy (the ImageAssurancePolicy scans are judged by)" -}}
{{- end -}}
{{- if and $k.settings.scan $k.settings.scan.budget (ge (float64 $k.settings.scan.budget) (float64 (sub (int $k.timeoutSeconds) 2))) -}}
{{- fail "kubeEnforcer.settings.scan.budget must be below kubeEnforcer.timeoutSeconds - 2 (the webhook's requestTimeout)" -}}
{{- end -}}
{{- end -}}
{{- $e := .Values.agent.enrollment -}}
{{- if and .Values.agent.enabled $e.enabled (not .Values.server.enabled) (not $e.serverAddress) -}}
{{- fail "agent.enrollment needs this release's server (server.enabled) or agent.enrollment.serverAddress" -}}
{{- end -}}
{{- if and .Values.agent.enabled $e.enabled $e.token (not $e.existingSecret) (not $e.caPem) (not $e.caSha256) -}}
{{- fail "agent.enrollment.token needs the server's CA: agent.enrollment.caPem (or caSha256)" -}}
{{- end -}}
{{- if and .Values.agent.enabled $e.enabled $e.caSha256 $s.http.tls (not $e.enrollAddress) -}}
{{- fail "agent.enrollment.caSha256 fetches the CA over plain HTTP from port 7080: with server.http.tls=true give the CA itself (caPem or ca.pem in existingSecret)" -}}
{{- end -}}
{{- end }}
