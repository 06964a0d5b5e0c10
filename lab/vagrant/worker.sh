#!/bin/sh
# A worker VM: containerd, runc and the CNI plugins from Debian, nodeagent from the synced
# repository, its kubeconfig from the control plane, and the systemd unit.
set -eu
: "${NODE_NAME:?}" "${NODE_IP:?}" "${CONTROL_PLANE_IP:?}" "${CLUSTER_CIDR:?}" "${SERVICE_CIDR:?}"
LAB=/vagrant/.vagrant/lab

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends containerd runc containernetworking-plugins \
    iptables conntrack iproute2 python3 python3-venv >/dev/null

# containerd: Debian's defaults plus what nodeagent relies on (lab/vagrant/containerd.toml).
install -m 0644 /vagrant/lab/vagrant/containerd.toml /etc/containerd/config.toml
systemctl restart containerd

modprobe br_netfilter
install -m 0644 /vagrant/lab/vagrant/sysctl.conf /etc/sysctl.d/90-nodeagent.conf
sysctl -q --system

# nodeagent in a venv of its own, from the synced folder (PyPI is reachable from the VMs).
[ -x /opt/nodeagent/bin/python ] || python3 -m venv /opt/nodeagent
/opt/nodeagent/bin/pip install -q --upgrade /vagrant
ln -sf /opt/nodeagent/bin/nodeagent /usr/local/bin/nodeagent

until [ -s "$LAB/${NODE_NAME}.kubeconfig" ]; do
    echo "waiting for the control plane to write $LAB/${NODE_NAME}.kubeconfig"; sleep 5
done
install -d -m 0700 /etc/nodeagent
install -m 0600 "$LAB/${NODE_NAME}.kubeconfig" /etc/nodeagent/kubelet.kubeconfig

cat > /etc/nodeagent/config.yaml <<CONFIG
node_name: ${NODE_NAME}
node_ip: ${NODE_IP}
kubeconfig: /etc/nodeagent/kubelet.kubeconfig
cluster_cidr: ${CLUSTER_CIDR}
service_cidr: ${SERVICE_CIDR}
CONFIG
echo 'NODEAGENT_ARGS="--config /etc/nodeagent/config.yaml"' > /etc/default/nodeagent

install -m 0644 /vagrant/systemd/nodeagent.service /etc/systemd/system/nodeagent.service
systemctl daemon-reload
systemctl enable -q nodeagent
systemctl restart nodeagent
echo "${NODE_NAME}: nodeagent started ($(systemctl is-active nodeagent))"
