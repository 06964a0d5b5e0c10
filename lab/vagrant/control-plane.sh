#!/bin/sh
# The control plane VM: a k3s server without its own agent, and a kubeconfig per worker.
#
# k3s runs the API server, scheduler and controller-manager (which gives every Node a
# spec.podCIDR from CLUSTER_CIDR: nodeagent's host-gw routes and CNI config follow it).
# Everything a kubelet or kube-proxy would do on the workers is nodeagent's, so k3s's own
# agent, flannel, network policy, kube-proxy, traefik and servicelb are off; so are coredns,
# metrics-server and local-storage, whose pods would need a cluster DNS and volumes this
# lab does not set up.
#
# Each worker gets a client certificate for system:node:<name> in group system:nodes,
# signed by k3s's client CA: what kubelet TLS bootstrap would leave, so the Node authorizer
# and NodeRestriction treat nodeagent as that node's kubelet. The nodes group is also bound
# to system:node-proxier, the role kube-proxy runs with (Services, EndpointSlices).
set -eu
: "${CONTROL_PLANE_IP:?}" "${CLUSTER_CIDR:?}" "${SERVICE_CIDR:?}" "${WORKERS:?}"
OUT=/vagrant/.vagrant/lab
TLS=/var/lib/rancher/k3s/server/tls

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq curl openssl >/dev/null

if ! systemctl is-active -q k3s; then
    curl -sfL https://get.k3s.io | INSTALL_K3S_EXEC="server \
        --disable-agent \
        --flannel-backend=none \
        --disable-network-policy \
        --disable-kube-proxy \
        --disable=traefik,servicelb,coredns,metrics-server,local-storage \
        --cluster-cidr=${CLUSTER_CIDR} \
        --service-cidr=${SERVICE_CIDR} \
        --advertise-address=${CONTROL_PLANE_IP} \
        --node-ip=${CONTROL_PLANE_IP} \
        --tls-san=${CONTROL_PLANE_IP} \
        --write-kubeconfig-mode=0644" sh -
fi
until k3s kubectl get --raw /readyz >/dev/null 2>&1; do sleep 2; done

k3s kubectl get clusterrolebinding nodeagent-proxier >/dev/null 2>&1 ||
    k3s kubectl create clusterrolebinding nodeagent-proxier \
        --clusterrole=system:node-proxier --group=system:nodes

mkdir -p "$OUT"
sed "s/127.0.0.1/${CONTROL_PLANE_IP}/" /etc/rancher/k3s/k3s.yaml > "$OUT/admin.kubeconfig"
ca=$(base64 -w0 < "$TLS/server-ca.crt")
for node in $WORKERS; do
    dir=$(mktemp -d)
    openssl ecparam -name prime256v1 -genkey -noout -out "$dir/key.pem"
    openssl req -new -key "$dir/key.pem" -subj "/O=system:nodes/CN=system:node:${node}" \
        -out "$dir/req.csr"
    openssl x509 -req -in "$dir/req.csr" -CA "$TLS/client-ca.crt" -CAkey "$TLS/client-ca.key" \
        -CAcreateserial -days 365 -out "$dir/cert.pem" 2>/dev/null
    cat > "$OUT/${node}.kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: https://${CONTROL_PLANE_IP}:6443
    certificate-authority-data: ${ca}
users:
- name: system:node:${node}
  user:
    client-certificate-data: $(base64 -w0 < "$dir/cert.pem")
    client-key-data: $(base64 -w0 < "$dir/key.pem")
contexts:
- name: lab
  context: {cluster: lab, user: "system:node:${node}"}
current-context: lab
KUBECONFIG
    chmod 0600 "$OUT/${node}.kubeconfig"
    rm -rf "$dir"
done
echo "control plane ready at https://${CONTROL_PLANE_IP}:6443; kubeconfigs in $OUT"
