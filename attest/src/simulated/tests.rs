//! Simulated evidence through the real parsers and verifiers, and its rejections.
#![allow(clippy::unwrap_used)]

use super::*;

const NONCE: [u8; 32] = [0x42; 32];

fn report_data() -> [u8; 64] {
    std::array::from_fn(|i| i as u8)
}

fn flip(bytes: &[u8], pos: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[pos] ^= 0x01;
    b
}

#[test]
fn gpu_evidence_round_trips_through_the_real_parser_and_verifier() {
    let sim = SimulatedGpu::new(2).unwrap();
    assert_eq!(sim.count(), 2);
    let states = sim.gpus().unwrap();
    assert_eq!(states.len(), 2);
    for (i, s) in states.iter().enumerate() {
        assert_eq!(s.index, i as u32);
        assert_eq!(s.name, "Simulated GPU (NOT confidential)");
        assert!(!s.cc_enabled && !s.dev_tools_mode);
    }
    let ev = sim.evidence(&NONCE).unwrap();
    assert_eq!(ev.len(), 2);
    let now = certgen::now();
    for (i, e) in ev.iter().enumerate() {
        assert_eq!(e.kind, EvidenceKind::SimulatedNvidiaSpdm);
        let r = nvidia::GpuReport::parse(&e.report).unwrap();
        assert_eq!(*r.request_nonce(), NONCE);
        assert_eq!(
            (r.request.attributes, r.request.operation, r.request.slot_id),
            (1, 0xFF, 0)
        );
        assert_eq!(r.measurement_blocks.len(), 64);
        assert_eq!(r.measurement_record_len, 64 * 55);
        assert_eq!(r.trailing_len, 0);
        for b in &r.measurement_blocks {
            assert_eq!((b.spec, b.value_type), (1, 1));
            assert_eq!(b.value, simulated_gpu_measurement(b.index));
        }

        let v = verify_simulated_gpu(&e.report, &e.cert_chain, &NONCE, Some(now)).unwrap();
        assert_eq!(v.request_nonce, hex::encode(NONCE));
        assert_eq!(v.driver_version.as_deref(), Some(SIMULATED_DRIVER_VERSION));
        assert_eq!(v.vbios_version.as_deref(), Some(SIMULATED_VBIOS_VERSION));
        assert_eq!(
            v.driver_version.as_deref(),
            Some(states[i].driver_version.as_str())
        );
        assert_eq!(v.vbios_version.as_deref(), Some(states[i].vbios_version.as_str()));
        assert_eq!(v.chip_sku.as_deref(), Some("SIM"));
        assert_eq!(v.project.as_deref(), Some("SIMULATED"));
        assert_eq!(v.fwid, hex::encode(simulated_gpu_fwid()));
        assert_eq!(v.chain_len, 3);
        assert!(v.leaf_subject.contains("SIMULATED"), "{}", v.leaf_subject);
        assert!(v.leaf_subject.contains(&format!("GPU {i} Leaf")));
        let chain = x509::parse_pem_bundle(&e.cert_chain).unwrap();
        assert_eq!(&chain[2], sim.root());
        assert!(x509::subject_string(&chain[1]).contains("SIMULATED GPU Intermediate"));
        // Serializable like a real verdict; and never valid against the NVIDIA root.
        serde_json::to_string(&v).unwrap();
        assert!(matches!(
            nvidia::verify_gpu_report(&e.report, &e.cert_chain, Some(NONCE), Some(now)),
            Err(Error::CertificateChain(_))
        ));
    }
    // Measurements are stable, responder nonces fresh.
    let again = sim.evidence(&NONCE).unwrap();
    let (a, b) = (
        nvidia::GpuReport::parse(&ev[0].report).unwrap(),
        nvidia::GpuReport::parse(&again[0].report).unwrap(),
    );
    assert_eq!(a.measurement_blocks, b.measurement_blocks);
    assert_ne!(a.responder_nonce, b.responder_nonce);
    // Zero GPUs is allowed (nothing to attest).
    let none = SimulatedGpu::new(0).unwrap();
    assert!(none.gpus().unwrap().is_empty() && none.evidence(&NONCE).unwrap().is_empty());
}

#[test]
fn gpu_rejections() {
    let sim = SimulatedGpu::new(1).unwrap();
    let e = sim.evidence(&NONCE).unwrap().remove(0);
    let r = nvidia::GpuReport::parse(&e.report).unwrap();
    // Wrong nonce.
    let mut other = NONCE;
    other[0] ^= 1;
    assert!(matches!(
        verify_simulated_gpu(&e.report, &e.cert_chain, &other, None),
        Err(Error::NonceMismatch(_))
    ));
    // A flipped byte: a measurement, the responder nonce, the FWID, the signature.
    let fwid_at = e
        .report
        .windows(48)
        .position(|w| w == simulated_gpu_fwid())
        .unwrap();
    for pos in [
        37 + 8 + 7 + 3,
        r.signed_len - 96,
        fwid_at + 1,
        r.signed_len,
        r.signed_len + 95,
    ] {
        let t = flip(&e.report, pos);
        assert!(
            matches!(
                verify_simulated_gpu(&t, &e.cert_chain, &NONCE, None),
                Err(Error::BadSignature(_))
            ),
            "byte {pos}"
        );
    }
    // Another instance's chain: a self-consistent chain whose leaf did not sign the report.
    let other_sim = SimulatedGpu::new(1).unwrap();
    let other_chain = other_sim.evidence(&NONCE).unwrap().remove(0).cert_chain;
    assert!(matches!(
        verify_simulated_gpu(&e.report, &other_chain, &NONCE, None),
        Err(Error::BadSignature(_))
    ));
    // Our leaf and intermediate under the other instance's root: the chain breaks.
    let ours = x509::parse_pem_bundle(&e.cert_chain).unwrap();
    let theirs = x509::parse_pem_bundle(&other_chain).unwrap();
    let mixed = certgen::to_pem(&[ours[0].clone(), ours[1].clone(), theirs[2].clone()]).unwrap();
    assert!(matches!(
        verify_simulated_gpu(&e.report, &mixed, &NONCE, None),
        Err(Error::CertificateChain(_))
    ));
    // Before the certificates' validity.
    assert!(matches!(
        verify_simulated_gpu(&e.report, &e.cert_chain, &NONCE, Some(1_000_000_000)),
        Err(Error::CertificateChain(_))
    ));
    // Garbage.
    assert!(verify_simulated_gpu(b"", &e.cert_chain, &NONCE, None).is_err());
    assert!(verify_simulated_gpu(&e.report, b"", &NONCE, None).is_err());
}

#[test]
fn cpu_evidence_round_trips_through_the_real_parser_and_verifier() {
    let sim = SimulatedCpu::new().unwrap();
    assert_eq!(sim.kind(), EvidenceKind::SimulatedSnpReport);
    let rd = report_data();
    let ev = sim.evidence(&rd).unwrap();
    assert_eq!(ev.kind, EvidenceKind::SimulatedSnpReport);
    assert_eq!(ev.quote.len(), snp::SNP_REPORT_LEN);
    assert_eq!(ev.certs, sim.certs_pem());

    let r = SnpReport::parse(&ev.quote).unwrap();
    assert_eq!(r.version, 2);
    assert_eq!(r.signature_algo, 1);
    assert!(!r.debug_allowed());
    assert_eq!(r.report_data, rd);
    assert_eq!(r.measurement, simulated_snp_measurement());
    assert_eq!(r.signing_key(), snp::SigningKey::Vcek);
    assert_eq!((r.reported_tcb, r.committed_tcb), (0, 0));
    r.signature().unwrap();

    let v = verify_simulated_snp(&ev.quote, &ev.certs, &rd).unwrap();
    assert_eq!(v.report_data, rd);
    assert_eq!(v.measurement, simulated_snp_measurement());
    assert!(!v.debug);
    assert_eq!(v.policy, snp::POLICY_RESERVED_1 | snp::POLICY_SMT);
    assert!(
        v.leaf_subject.contains("SIMULATED SEV-SNP VCEK"),
        "{}",
        v.leaf_subject
    );
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["measurement"], hex::encode(simulated_snp_measurement()));
    assert_eq!(json["report_data"], hex::encode(rd));
    let back: VerifiedSimulatedCpu = serde_json::from_value(json).unwrap();
    assert_eq!(back, v);
    // The chain is VCEK-like leaf then root, P-384.
    let chain = x509::parse_pem_bundle(&ev.certs).unwrap();
    assert_eq!(chain.len(), 2);
    x509::p384_verifying_key(&chain[0]).unwrap();
    // Never valid against AMD's roots.
    let der = x509::to_der(&chain[0]).unwrap();
    assert!(snp::verify_snp_report(&r, &der, snp::AmdProduct::Milan, Some(&rd), certgen::now()).is_err());
}

#[test]
fn cpu_rejections() {
    let sim = SimulatedCpu::new().unwrap();
    let rd = report_data();
    let ev = sim.evidence(&rd).unwrap();
    // Wrong expected report data.
    let mut other = rd;
    other[63] ^= 1;
    assert!(matches!(
        verify_simulated_snp(&ev.quote, &ev.certs, &other),
        Err(Error::ReportDataMismatch(_))
    ));
    // A flipped byte in the signed part (policy, report data, measurement) or the signature.
    for pos in [0x08, 0x50, 0x90 + 47, 0x29F, 0x2A0, 0x2E8 + 10] {
        let t = flip(&ev.quote, pos);
        assert!(
            matches!(
                verify_simulated_snp(&t, &ev.certs, &rd),
                Err(Error::BadSignature(_))
            ),
            "byte {pos:#x}"
        );
    }
    // Turning DEBUG on breaks the signature.
    let mut t = ev.quote.clone();
    t[0x0A] |= 0x08;
    assert!(matches!(
        verify_simulated_snp(&t, &ev.certs, &rd),
        Err(Error::BadSignature(_))
    ));
    // Another instance's chain: the signature fails; its root under our leaf: the chain fails.
    let other_sim = SimulatedCpu::new().unwrap();
    assert!(matches!(
        verify_simulated_snp(&ev.quote, other_sim.certs_pem(), &rd),
        Err(Error::BadSignature(_))
    ));
    let ours = x509::parse_pem_bundle(&ev.certs).unwrap();
    let theirs = x509::parse_pem_bundle(other_sim.certs_pem()).unwrap();
    let mixed = certgen::to_pem(&[ours[0].clone(), theirs[1].clone()]).unwrap();
    assert!(matches!(
        verify_simulated_snp(&ev.quote, &mixed, &rd),
        Err(Error::CertificateChain(_))
    ));
    // Just one certificate.
    let leaf_only = certgen::to_pem(&ours[..1]).unwrap();
    assert!(matches!(
        verify_simulated_snp(&ev.quote, &leaf_only, &rd),
        Err(Error::CertificateChain(_))
    ));
    // Wrong length, unknown version, masked or non-VCEK signing key.
    assert!(matches!(
        verify_simulated_snp(&ev.quote[..100], &ev.certs, &rd),
        Err(Error::Malformed { .. })
    ));
    let mut t = ev.quote.clone();
    t[0] = 9;
    assert!(matches!(
        verify_simulated_snp(&t, &ev.certs, &rd),
        Err(Error::Unsupported { .. })
    ));
    let mut t = ev.quote.clone();
    t[0x48] = 1 << 2; // VLEK
    assert!(matches!(
        verify_simulated_snp(&t, &ev.certs, &rd),
        Err(Error::Unsupported { .. })
    ));
    let mut t = ev.quote.clone();
    t[0x34] = 2;
    assert!(matches!(
        verify_simulated_snp(&t, &ev.certs, &rd),
        Err(Error::Unsupported { .. })
    ));
}

#[test]
fn instances_make_different_keys() {
    let (a, b) = (SimulatedCpu::new().unwrap(), SimulatedCpu::new().unwrap());
    assert_ne!(a.certs_pem(), b.certs_pem());
    let key = |pem: &[u8], i: usize| {
        x509::p384_verifying_key(&x509::parse_pem_bundle(pem).unwrap()[i])
            .unwrap()
            .to_encoded_point(true)
    };
    assert_ne!(key(a.certs_pem(), 0), key(b.certs_pem(), 0));
    assert_ne!(key(a.certs_pem(), 1), key(b.certs_pem(), 1));

    let (g, h) = (SimulatedGpu::new(2).unwrap(), SimulatedGpu::new(1).unwrap());
    let ge = g.evidence(&NONCE).unwrap();
    let he = h.evidence(&NONCE).unwrap();
    for i in 0..3 {
        assert_ne!(key(&ge[0].cert_chain, i), key(&he[0].cert_chain, i), "cert {i}");
    }
    // Two GPUs of one instance: own leaves, shared intermediate and root.
    assert_ne!(key(&ge[0].cert_chain, 0), key(&ge[1].cert_chain, 0));
    assert_eq!(key(&ge[0].cert_chain, 1), key(&ge[1].cert_chain, 1));
    assert_eq!(key(&ge[0].cert_chain, 2), key(&ge[1].cert_chain, 2));
    // Debug output names no key material.
    let dbg = format!("{g:?} {a:?}");
    assert!(
        dbg.contains("SimulatedGpu") && dbg.contains("SimulatedCpu"),
        "{dbg}"
    );
}

#[test]
fn the_notice_says_not_confidential() {
    assert!(NOT_CONFIDENTIAL_NOTICE.contains("NOT confidential"));
    assert!(SIMULATED_GPU_NAME.contains("NOT confidential"));
    assert!(EvidenceKind::SimulatedNvidiaSpdm.is_simulated());
    assert!(EvidenceKind::SimulatedSnpReport.is_simulated());
}
