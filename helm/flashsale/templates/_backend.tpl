{{/*
A backend component: a Deployment running `flashsale serve <component>` and the headless
Service its clients resolve to reach every pod (they balance calls across them). Call with
(dict "root" $ "component" "inventory" "serve" "inventory" "port" "50052"
      "need" (list "redis" "nats") "migrate" false "service" true), and "api" false for a
component whose Service carries only the health port.
*/}}
{{- define "flashsale.backend" -}}
{{- $root := .root }}
{{- $component := .component }}
{{- $values := index $root.Values $component }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "flashsale.fullname" $root }}-{{ $component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "flashsale.componentLabels" (dict "root" $root "component" $component) | nindent 4 }}
spec:
  {{- if not $values.autoscaling.enabled }}
  replicas: {{ $values.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  selector:
    matchLabels:
      {{- include "flashsale.selectorLabels" (dict "root" $root "component" $component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "flashsale.selectorLabels" (dict "root" $root "component" $component) | nindent 8 }}
        {{- with $root.Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- include "flashsale.podAnnotations" $root | nindent 8 }}
    spec:
      {{- include "flashsale.scheduling" (dict "root" $root "component" $component) | nindent 6 }}
      {{- if .migrate }}
      initContainers:
        {{- include "flashsale.migrateInit" $root | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ $component }}
          image: {{ include "flashsale.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["serve", {{ .serve | quote }}]
          ports:
            - name: grpc
              containerPort: {{ .port }}
              protocol: TCP
            - name: health
              containerPort: {{ include "flashsale.port.health" $root }}
              protocol: TCP
            - name: metrics
              containerPort: {{ include "flashsale.port.metrics" $root }}
              protocol: TCP
          env:
            {{- include "flashsale.env" $root | nindent 12 }}
          volumeMounts:
            {{- include "flashsale.volumeMounts" $root | nindent 12 }}
          {{- include "flashsale.grpcProbes" (dict "port" (include "flashsale.port.health" $root)) | nindent 10 }}
          lifecycle:
            {{- include "flashsale.lifecycle" $root | nindent 12 }}
          securityContext:
            {{- include "flashsale.securityContext" $root | nindent 12 }}
          resources:
            {{- toYaml $values.resources | nindent 12 }}
      volumes:
        {{- include "flashsale.configVolume" $root | nindent 8 }}
        {{- include "flashsale.secretsVolume" (dict "root" $root "need" .need) | nindent 8 }}
{{- if .service }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "flashsale.fullname" $root }}-{{ $component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "flashsale.componentLabels" (dict "root" $root "component" $component) | nindent 4 }}
spec:
  # Headless: the name resolves to every ready pod, and clients balance over them.
  clusterIP: None
  selector:
    {{- include "flashsale.selectorLabels" (dict "root" $root "component" $component) | nindent 4 }}
  ports:
    {{- if ne .api false }}
    - name: grpc
      port: {{ .port }}
      targetPort: grpc
      protocol: TCP
      {{- if not $root.Values.tls.enabled }}
      appProtocol: kubernetes.io/h2c
      {{- end }}
    {{- end }}
    {{- if $root.Values.tests.enabled }}
    # Plaintext health only, for `helm test`.
    - name: health
      port: {{ include "flashsale.port.health" $root }}
      targetPort: health
      protocol: TCP
      appProtocol: kubernetes.io/h2c
    {{- end }}
{{- end }}
{{- end }}
