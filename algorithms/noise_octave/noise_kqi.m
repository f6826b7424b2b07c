function result = noise_kqi(vol, meta, params, outdir)
% NOISE_KQI  Background noise sigma, noise floor and SNR (dB), as algorithms/noise (Python).
%   vol is [depth, ascans, bscans]. Each B-scan is cut into tiles of
%   tile_rows x tile_cols; background tiles have a mean within k standard
%   errors of the mean of the lowest low_fraction of tiles; sigma =
%   sqrt(median tile variance), floor = median tile mean over background
%   tiles; SNR = 20 log10((P99 - floor) / sigma).
  p = struct('tile_rows', 16, 'tile_cols', 32, 'low_fraction', 0.1, 'k', 4.0, ...
             'signal_percentile', 99.0, 'log_dynamic_range_db', 40.0);
  names = fieldnames(params);
  for i = 1:numel(names)
    p.(names{i}) = params.(names{i});
  end
  notes = {};
  note = '';
  kind = 'linear';
  if isfield(meta, 'intensity') && ischar(meta.intensity)
    kind = meta.intensity;
  end
  bad = ~isfinite(vol);
  if all(bad(:))
    error('no finite voxel in the volume (all NaN/inf)');
  end
  if any(bad(:))
    vol(bad) = min(vol(~bad));
    notes{end + 1} = sprintf('%d non-finite voxel(s) replaced by the volume minimum', sum(bad(:)));
  end
  if strcmp(kind, 'log8')
    vol = 10 .^ (vol * (p.log_dynamic_range_db / 255 / 10));
    note = 'log8 input linearised: sigma and floor in relative linear units; SNR comparable';
  elseif strcmp(kind, 'rescaled100')
    note = 'intensities were rescaled to 0-100: sigma and floor are not in device units';
  end
  if ~isempty(note)
    notes{end + 1} = note;
  end
  [nz, nx, nb] = size(vol);
  th = min(p.tile_rows, nz); tw = min(p.tile_cols, nx);
  nzt = floor(nz / th); nxt = floor(nx / tw); nt = nzt * nxt; n = th * tw;
  all_means = []; all_vars = [];
  sig_b = zeros(1, nb); floor_b = zeros(1, nb); peak_b = zeros(1, nb);
  for b = 1:nb
    I = vol(1:nzt * th, 1:nxt * tw, b);
    T = reshape(I, th, nzt, tw, nxt);
    m = reshape(mean(mean(T, 1), 3), 1, nt);
    sq = reshape(mean(mean(T .^ 2, 1), 3), 1, nt);
    v = max(sq - m .^ 2, 0) * n / max(n - 1, 1);
    n_low = max(1, round(p.low_fraction * nt));
    [~, order] = sort(m);
    low = order(1:n_low);
    mu0 = mean(m(low));
    s0 = sqrt(median(v(low)));
    sel = m <= mu0 + p.k * s0 / sqrt(n);
    sel(low) = true;
    sig_b(b) = sqrt(median(v(sel)));
    floor_b(b) = median(m(sel));
    all_means = [all_means, m(sel)]; %#ok<AGROW>
    all_vars = [all_vars, v(sel)]; %#ok<AGROW>
    x = sort(reshape(vol(:, :, b), [], 1));
    kth = min(numel(x) - 1, round(p.signal_percentile / 100 * (numel(x) - 1)));
    peak_b(b) = x(kth + 1);
  end
  sigma = sqrt(median(all_vars));
  fl = median(all_means);
  signal_b = peak_b - floor_b;
  snr_b = nan(1, nb);
  ok = sig_b > 0 & signal_b > 0;
  snr_b(ok) = 20 * log10(signal_b(ok) ./ sig_b(ok));
  signal = median(peak_b) - fl;
  if sigma > 0 && signal > 0
    snr = 20 * log10(signal / sigma);
  else
    snr = NaN;
    notes{end + 1} = 'SNR undefined: no signal above the noise floor or zero noise';
  end
  if any(~isnan(snr_b))
    snr_min = min(snr_b(~isnan(snr_b)));
  else
    snr_min = NaN;
  end
  result.kqis.noise_sigma = struct('value', sigma, 'unit', 'intensity');
  result.kqis.noise_sigma.per_bscan = sig_b;
  result.kqis.noise_floor = struct('value', fl, 'unit', 'intensity');
  result.kqis.noise_floor.per_bscan = floor_b;
  result.kqis.snr_db = struct('value', snr, 'unit', 'dB');
  result.kqis.snr_db.per_bscan = snr_b;
  result.kqis.snr_db_min = struct('value', snr_min, 'unit', 'dB');
  if ~isempty(note)
    kn = fieldnames(result.kqis);
    for i = 1:numel(kn)
      result.kqis.(kn{i}).note = note;
    end
  end
  result.notes = notes;
end
