# Least privilege: the serve port from serve.allow_cidrs, SSH from serve.ssh_cidrs, and nothing
# else reaches the stack's VMs. Egress is left at GCP's default.

resource "google_compute_firewall" "serve" {
  name          = "${var.stack}-serve"
  network       = var.network
  direction     = "INGRESS"
  priority      = 1000
  source_ranges = var.serve_cidrs
  target_tags   = [local.tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.port)]
  }
}

resource "google_compute_firewall" "ssh" {
  count = min(length(var.ssh_cidrs), 1) # no rule at all when nobody may SSH

  name          = "${var.stack}-ssh"
  network       = var.network
  direction     = "INGRESS"
  priority      = 1000
  source_ranges = var.ssh_cidrs
  target_tags   = [local.tag]

  allow {
    protocol = "tcp"
    ports    = ["22"]
  }
}

# The default VPC lets SSH, RDP and ICMP in from anywhere (its default-allow-* rules, priority
# 65534). This rule outranks them for the stack's VMs only; the allow rules above outrank it.
resource "google_compute_firewall" "deny_other_ingress" {
  name          = "${var.stack}-deny-ingress"
  network       = var.network
  direction     = "INGRESS"
  priority      = 65000
  source_ranges = ["0.0.0.0/0"]
  target_tags   = [local.tag]

  deny {
    protocol = "all"
  }
}
