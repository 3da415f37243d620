// Package deploytest checks the deployment files of the repository, which no
// cluster and no container engine can check here: the Dockerfile and
// .dockerignore, the kustomize base and overlays of deploy/k8s, the chaos
// experiments of deploy/chaos and the Alertmanager route of
// deploy/alertmanager. Manifests are built with the kustomize API and decoded
// strictly into k8s.io/api types; alert rules run through promtool, routes
// through amtool; the Dockerfile's build line is run for real.
//
// The package has no code of its own: its test-only dependencies
// (kustomize, k8s.io/api, buildkit) never reach the service binary, which a
// test proves with `go version -m`.
package deploytest
